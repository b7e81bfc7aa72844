"""Free-text values of an encoded dataset, read straight from its bytes.

The verification gate reads the output *as written*, not the ``Dataset`` the writer was
given, so a writer bug cannot hide a leak. pydicom's reader would do, but it builds a
``Dataset`` and converts every value it is asked for; this parser only walks the element
headers, recurses into every sequence item at any depth (defined or undefined lengths,
sequences encoded as UN), and decodes the text VRs (PN LO SH ST LT UT UC UR) with the
character set in force for that item. Anything it does not understand raises ``Malformed``
and the gate falls back to pydicom's reader.
"""

from __future__ import annotations

import re
import struct
from functools import lru_cache

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.valuerep import TEXT_VR_DELIMS

SCANNED_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "UR"})
#: coded, date, numeric and UID strings (the default repertoire): given too when asked for
#: (``structured``), because the raw byte scan alone misses a value whose neighbouring
#: header bytes happen to be letters or digits (in big endian, a length of 48-57 bytes is
#: an ASCII digit before the value; a following group 0x0030-0x0039, 0x0041-0x005A ...
#: is one after it), so such a value is looked for as a value
STRUCTURED_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
_SINGLE_VALUED = frozenset({"ST", "LT", "UT", "UR"})
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ALL_VRS = SCANNED_VRS | STRUCTURED_VRS
#: an element of unknown VR (``UN``, private in implicit VR) is also given, as ``("UN",
#: text)``, when it is at most this long and printable ASCII (padding included)
_UNKNOWN_TEXT_MAX = 4096
_PRINTABLE = re.compile(rb"[\x20-\x7e]*\x00?")
UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_CHARSET = 0x00080005
_STRUCTS = {
    little: (struct.Struct(e + "HH"), struct.Struct(e + "H"), struct.Struct(e + "L"))
    for little, e in ((True, "<"), (False, ">"))
}


class Malformed(Exception):
    """The bytes are not a dataset this parser can walk (the caller falls back)."""


@lru_cache(maxsize=4096)
def _dict_vr(tag: int) -> str | None:
    if tag & 0x10000:
        return None  # private: VR unknown without the creator; the byte scan covers it
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def text_values(
    data: bytes,
    implicit: bool,
    little: bool,
    encodings: list[str] | None = None,
    *,
    structured: bool = False,
) -> list[tuple[str, str]]:
    """``(vr, text)`` for every free-text value at every depth of the encoded dataset
    `data` (multi-valued strings split, trailing padding removed, empty values skipped);
    with `structured`, every value of the ``STRUCTURED_VRS`` as well, and printable values
    of unknown VR as ``UN``."""
    out: list[tuple[str, str]] = []
    wanted = _ALL_VRS if structured else SCANNED_VRS
    pos, _ = _dataset(data, 0, len(data), implicit, little, encodings or ["iso8859"], out, wanted)
    if pos != len(data):
        raise Malformed("trailing bytes")
    return out


def _dataset(
    data: bytes,
    pos: int,
    end: int,
    implicit: bool,
    little: bool,
    encodings: list[str],
    out: list[tuple[str, str]],
    wanted: frozenset[str] = SCANNED_VRS,
) -> tuple[int, bool]:
    """Walk elements from `pos` to `end`; return (position, stopped at an item delimiter)."""
    hh, h, ll = _STRUCTS[little]
    while pos < end:
        if pos + 8 > end:
            raise Malformed("truncated element header")
        group, element = hh.unpack_from(data, pos)
        tag = group << 16 | element
        if tag == _ITEM_END:
            return pos + 8, True
        sq_implicit, sq_little = implicit, little
        if implicit:
            vr = _dict_vr(tag)
            (length,) = ll.unpack_from(data, pos + 4)
            pos += 8
        else:
            raw_vr = data[pos + 4 : pos + 6]
            if raw_vr in _LONG_VRS:
                if pos + 12 > end:
                    raise Malformed("truncated element header")
                (length,) = ll.unpack_from(data, pos + 8)
                pos += 12
            else:
                (length,) = h.unpack_from(data, pos + 6)
                pos += 8
            try:
                vr = raw_vr.decode("ascii")
            except UnicodeDecodeError as exc:
                raise Malformed("bad VR") from exc
            if vr == "UN":  # as pydicom: the dictionary VR; UN sequences are implicit LE
                vr = _dict_vr(tag) or "UN"
                sq_implicit, sq_little = True, True
        if vr == "SQ" or (length == UNDEFINED and vr in (None, "UN")):
            pos = _sequence(data, pos, length, end, sq_implicit, sq_little, encodings, out, wanted)
            continue
        if length == UNDEFINED or pos + length > end:
            raise Malformed("undefined or overlong value")
        if tag == _CHARSET or vr in wanted:
            value = data[pos : pos + length]
            if tag == _CHARSET:
                terms = value.decode("ascii", "replace").rstrip("\0 ").split("\\")
                encodings = convert_encodings([t.strip() for t in terms])
                if vr in wanted:
                    _add(out, vr, value.decode("latin-1"), single=False)
            elif vr in STRUCTURED_VRS:
                _add(out, vr, value.decode("latin-1"), single=False)
            elif vr == "UR":
                _add(out, vr, value.decode("latin-1"), single=True)
            else:
                text = decode_bytes(value, encodings, TEXT_VR_DELIMS)
                _add(out, vr, text, single=vr in _SINGLE_VALUED)  # type: ignore[arg-type]
        elif (vr is None or vr == "UN") and wanted is _ALL_VRS:
            # no VR known (a private element in implicit VR, or UN): if its bytes are
            # printable ASCII it is text for all we know, looked for as a structured value
            unknown = unknown_vr_text(data[pos : pos + length])
            if unknown is not None:
                _add(out, "UN", unknown, single=False)
        pos += length
    return pos, False


def unknown_vr_text(value: bytes) -> str | None:
    """A value of unknown VR as text, if it is at most ``_UNKNOWN_TEXT_MAX`` bytes of
    printable ASCII (an even-length pad NUL allowed), else None."""
    if len(value) <= _UNKNOWN_TEXT_MAX and _PRINTABLE.fullmatch(value):
        return value.decode("ascii")
    return None


def _add(out: list[tuple[str, str]], vr: str, text: str, single: bool) -> None:
    for part in (text,) if single else text.split("\\"):
        part = part.strip("\0 ")
        if part:
            out.append((vr, part))


def _sequence(
    data: bytes,
    pos: int,
    length: int,
    end: int,
    implicit: bool,
    little: bool,
    encodings: list[str],
    out: list[tuple[str, str]],
    wanted: frozenset[str] = SCANNED_VRS,
) -> int:
    hh, _h, ll = _STRUCTS[little]
    seq_end = end if length == UNDEFINED else pos + length
    if seq_end > end:
        raise Malformed("sequence longer than its parent")
    while pos < seq_end:
        if pos + 8 > seq_end:
            raise Malformed("truncated item header")
        group, element = hh.unpack_from(data, pos)
        (item_length,) = ll.unpack_from(data, pos + 4)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQ_END and length == UNDEFINED:
            return pos
        if tag != _ITEM:
            raise Malformed("expected an item")
        if item_length == UNDEFINED:
            pos, delimited = _dataset(data, pos, seq_end, implicit, little, encodings, out, wanted)
            if not delimited:
                raise Malformed("item without delimiter")
        else:
            item_end = pos + item_length
            if item_end > seq_end:
                raise Malformed("item longer than its sequence")
            pos, delimited = _dataset(data, pos, item_end, implicit, little, encodings, out, wanted)
            if delimited or pos != item_end:
                raise Malformed("item delimiter inside a defined-length item")
    if length == UNDEFINED:
        raise Malformed("sequence without delimiter")
    return pos
