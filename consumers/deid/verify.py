"""The independent verification gate: does anything of the source patient survive?

It knows nothing about the table. From the *source* instance it collects identifying values
(``identifiers``: every name token of every PN at any depth, patient IDs, the NHS number,
birth date in several spellings, accession number, institution, addresses, phone numbers,
original instance UIDs); then it scans the *output*:

* every free-text value at every depth, parsed back from the written bytes (``rawtext``:
  so a writer bug is caught too), case-insensitively and on word boundaries; and every
  coded, date, numeric and UID value the same way (identifiers of 3+ characters, the birth
  date in any spelling, original UIDs as whole values);
* the raw written bytes (file meta + dataset), for identifiers of 3 characters or more, in
  UTF-8, Latin-1 and the instance's own character sets; native pixel data separately
  (``pixels``: its length against the image attributes, identifiers of 6+ bytes in it;
  burned-in text, rendered rather than bytes, is the pixel gate's job);
* NHS-number (10 digits passing modulus 11), UK-postcode and UK-phone patterns in every
  free-text value.

A hit returns its *kind* (never the value); the instance is then held back.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from .codec import Encoded
from .fold import fold
from .identifiers import (
    FREE_TEXT_VRS,
    Identifiers,
    _dict_vr,
    _strings,
    birth_date_spellings,
    pattern_kind,
)
from .names import find_name
from .rawtext import STRUCTURED_VRS, Malformed, text_values, unknown_vr_text
from .receipts import is_own_text

__all__ = [
    "Identifiers",
    "birth_date_spellings",
    "pattern_kind",
    "scan_dataset",
    "scan_structured",
    "scan_texts",
    "text_values",
    "verify_output",
]


def scan_dataset(ds: Dataset, ids: Identifiers) -> str | None:
    """Kind of the first hit in any free-text, coded, date, numeric or UID value at any
    depth of `ds` (as ``scan_texts``), else None. Binary values are left to the raw byte
    scan (``search_bytes``)."""
    for tag in list(ds.keys()):
        elem = ds.get_item(tag)  # raw unless converted: no value conversion here
        vr = elem.VR
        if vr is None or vr == "UN":
            vr = _dict_vr(int(tag)) or vr
        if vr == "SQ":
            value = ds[tag].value
            for item in value if isinstance(value, Sequence) else ():
                kind = scan_dataset(item, ids)
                if kind:
                    return kind
        elif vr in STRUCTURED_VRS:
            value = elem.value
            texts = _strings(
                value.decode("latin-1").split("\\") if isinstance(value, bytes) else value
            )
            kind = scan_structured([(vr, t) for t in texts], ids)
            if kind:
                return kind
        elif vr is None or vr == "UN":
            value = elem.value
            text = unknown_vr_text(value) if isinstance(value, bytes) else None
            kind = scan_structured([("UN", text)], ids) if text else None
            if kind:
                return kind
        elif vr in FREE_TEXT_VRS or vr == "UR":
            value = ds[tag].value
            if isinstance(value, PersonName):
                value = str(value)
            for text in _strings(value):
                kind = ids.search_value(text, vr)
                if kind is None and ids.check_names and vr in FREE_TEXT_VRS:
                    if text.strip() not in ids.own_values and not is_own_text(text):
                        kind = names_kind(text)
                if kind:
                    return kind
    return None


#: Joins values for one regex pass; no identifier or pattern can match across it.
_SEPARATOR = "\n\x00\n"


#: what ``scan_structured`` looks at: the structured VRs, and printable values of unknown VR
_AS_VALUES = STRUCTURED_VRS | {"UN"}


def scan_structured(values: list[tuple[str, str]], ids: Identifiers) -> str | None:
    """Kind of the first hit among coded, date, numeric and UID values (``STRUCTURED_VRS``)
    and printable values of unknown VR (``UN``: a private element in implicit VR), else
    None: an original UID of the instance as a whole value, the instance's identifiers of
    3+ characters (as the raw byte scan looks for them) and the birth date in any
    spelling. No generic patterns: a number or a code is not free text. The byte scan sees
    these bytes too, but not always: the header bytes next to a value can be letters or
    digits, and then its word-boundary check fails (a birth date kept under the full-dates
    option, in big endian, went through that way)."""
    if not values:
        return None
    uids = ids.uids
    if uids and any(vr == "UI" and text in uids for vr, text in values):
        return "original_uid"
    return ids.search_folded(fold(_SEPARATOR.join(text for _vr, text in values)), 3)


def scan_texts(values: list[tuple[str, str]], ids: Identifiers) -> str | None:
    """Kind of the first hit among ``(vr, text)`` values, else None: the instance's
    identifiers in any of them, the generic patterns in free text (not UR, not our own
    pseudonym); coded, date, numeric and UID values as ``scan_structured``. One pass over
    the joined values for each, instead of one per value."""
    structured: list[tuple[str, str]] = []
    texts: list[tuple[str, str]] = []
    for pair in values:
        (structured if pair[0] in _AS_VALUES else texts).append(pair)
    kind = scan_structured(structured, ids)
    if kind:
        return kind
    values = texts
    if not values:
        return None
    kind = ids.search_folded(fold(_SEPARATOR.join(text for _vr, text in values)))
    if kind:
        return kind
    own = ids.own_values
    free = [t for vr, t in values if vr in FREE_TEXT_VRS and t.strip() not in own]
    if not free:
        return None
    kind = pattern_kind(fold(_SEPARATOR.join(free)))
    if kind is None and ids.check_names:
        # our own receipts hold no name: skip them (they are most of the text)
        kind = names_kind("\n".join(t for t in free if not is_own_text(t)))
    return kind


def names_kind(text: str) -> str | None:
    """``name_vocabulary`` if free text holds a person name of the vocabulary (``names``)."""
    return "name_vocabulary" if text and find_name(text) else None


def verify_output(encoded: Encoded, ids: Identifiers) -> str | None:
    """The gate: kind of the first surviving identifier in the output, else None.

    Scans the written bytes without the pixel data (``encoded.scan``), then every free-text
    value of the file meta and of the dataset as parsed back from those bytes
    (``rawtext``; pydicom's reader if that parser gives up).
    """
    kind = ids.search_bytes(encoded.scan)
    if kind:
        return kind
    try:
        values = text_values(encoded.meta, False, True, structured=True)
        values += text_values(encoded.body, encoded.implicit, encoded.little, structured=True)
    except (Malformed, struct.error, LookupError, UnicodeError):
        meta = read_dataset(BytesIO(encoded.meta), False, True)
        parsed = read_dataset(BytesIO(encoded.body), encoded.implicit, encoded.little)
        return scan_dataset(meta, ids) or scan_dataset(parsed, ids)
    return scan_texts(values, ids)
