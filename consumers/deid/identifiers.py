"""The identifying values of one source instance, and fast scanners for them.

Collected at every depth from the *source* (``Identifiers.collect``): every name token of
every PN, patient IDs, the NHS number, birth date in several spellings, accession number,
institution, addresses, phone numbers, original instance UIDs. Searched for in text values
(``search_text`` / ``search_value`` / ``search_identifiers``) and in raw bytes
(``search_bytes``), plus the generic NHS-number / UK-postcode / UK-phone patterns
(``pattern_kind``). Used by the table walk (clean action), the verification gate
(``verify``) and the OCR verifier.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import TEXT_VR_DELIMS

from .fold import fold
from .kinds import (
    ADDRESS_KEYWORDS,
    ADDRESS_STOPWORDS,
    ID_KEYWORDS,
    KINDS,
    OWN_VOCABULARY,
    PHONE_KEYWORDS,
    UID_KEYWORDS,
)
from .patterns import PHONE_PATTERN, POSTCODE_PATTERN, has_nhs_number, pattern_kind
from .pseudonyms import nhs_number_valid
from .scanners import _DOB, _NHS, _PHONE, Scanners, compiled_scanners, search
from .spellings import birth_date_spellings, name_variants, parse_da

FREE_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
STRING_VRS = FREE_TEXT_VRS | {"UR", "AE", "CS", "DA", "DT", "TM", "AS", "IS", "DS", "UI"}

__all__ = [
    "KINDS",
    "PHONE_PATTERN",
    "POSTCODE_PATTERN",
    "Identifiers",
    "birth_date_spellings",
    "fold",
    "has_nhs_number",
    "pattern_kind",
]

#: tag -> keyword of the attributes collected besides person names (looked up for every value)
_INTEREST_KEYWORDS = {
    int(tag_for_keyword(kw) or 0): kw
    for kw in (*ID_KEYWORDS, *ADDRESS_KEYWORDS, *PHONE_KEYWORDS, *UID_KEYWORDS, "PatientBirthDate")
}
_INTEREST = frozenset(_INTEREST_KEYWORDS)
_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_DIGITS = frozenset(b"0123456789")
_UID_CHARS = frozenset(b"0123456789.")
_TOKEN_SPLIT = re.compile(r"[\^=\s,.;:/()\"'\-]+")


def _dict_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _strings(value: object) -> Iterator[str]:
    if value is None:
        return
    if isinstance(value, MultiValue | list | tuple):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, bytes):
        return
    else:
        text = str(value).strip("\0 ")
        if text:
            yield text


_CHARSET = 0x00080005
_PATIENT_NAME = 0x00100010
#: VRs pydicom decodes with the instance's character set; other string VRs are ASCII.
_CHARSET_VRS = frozenset({"PN", "SH", "LO", "ST", "LT", "UC", "UT"})
_STRING_VRS = _CHARSET_VRS | {"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "IS", "DS"}
_SINGLE_VALUED = frozenset({"ST", "LT", "UT", "UR"})


def _values(ds: Dataset, tag: BaseTag, vr: str | None, encodings: list[str]) -> list[str]:
    """The string values of one element, decoded straight from its raw bytes when it is
    still raw (as pydicom would decode them, without converting the element: it is about
    to be removed or replaced anyway), else from its value."""
    elem = ds._dict[tag]  # not get_item: no key conversion (a hot loop)
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes) and vr in _STRING_VRS:
        if vr in _CHARSET_VRS:
            text = decode_bytes(elem.value, encodings, TEXT_VR_DELIMS)
        else:
            text = elem.value.decode("latin-1")
        parts = [text] if vr in _SINGLE_VALUED else text.split("\\")
        return [p for p in (part.strip("\0 ") for part in parts) if p]
    return list(_strings(ds[tag].value))


class Identifiers:
    """The identifying values of one source instance, and fast scanners for them.

    Every comparison is made on folded text (``fold``: no accents, no case, compatibility
    forms decomposed) on both sides: the values are folded when the scanners are compiled,
    the searched text when it is searched.
    """

    def __init__(self) -> None:
        self.values: dict[str, str] = {}  # casefolded value -> kind
        self.uids: dict[str, str] = {}
        self.encodings: list[str] = ["iso8859"]
        self._scanners: Scanners | None = None
        self._literals: dict[bytes, tuple[str, bool, bool]] = {}
        #: values we generated ourselves (the patient pseudonym: 32 hex digits, which can look
        #: like a phone or NHS number by chance); exempt from the generic patterns only
        self.own_values: set[str] = set()
        #: also look for person names of the vocabulary in free text (``names``)
        self.check_names = False
        #: the source's top-level patient attributes as decoded (tag -> first value)
        self.patient: dict[int, str] = {}
        self.nhs_tag = -1

    # -- collection -----------------------------------------------------------------------
    def add(self, value: str, kind: str, min_len: int = 2) -> None:
        value = value.strip()
        if len(value) >= min_len and fold(value) not in OWN_VOCABULARY:
            self.values.setdefault(value.casefold(), kind)
            self._scanners = None

    def add_name(self, name: str) -> None:
        """Every part of every component of a PN value, and the parts joined together
        (``spellings.name_variants``: one-letter parts live on in the joined forms)."""
        tokens, joined = name_variants(name)
        for token in tokens:
            self.add(token, "person_name")
        for word in joined:
            self.add(word, "person_name", 3)

    def add_nhs(self, value: str) -> None:
        digits = nhs_number_valid(value) or re.sub(r"[\s-]", "", value)
        self.add(digits, "nhs_number", 3)
        if len(digits) == 10 and digits.isascii() and digits.isdigit():
            # literals for the byte and pixel scans; free text and raw bytes also get a
            # pattern with any grouping and separators
            for sep in " -":
                self.add(f"{digits[:3]}{sep}{digits[3:6]}{sep}{digits[6:]}", "nhs_number")
            self.values.setdefault(_NHS + digits, "nhs_number")

    def add_birth_date(self, da: str) -> None:
        for spelling in birth_date_spellings(da):
            self.add(spelling, "birth_date", 6)
        if parse_da(da) is not None:
            self.values.setdefault(_DOB + da.strip(), "birth_date")

    def collect(self, ds: Dataset, nhs_keyword: str, meta: Dataset | None = None) -> None:
        """Collect from `ds` at every depth (and from the source file meta).

        Only PN, sequences and the attributes named above are decoded: the rest of the
        dataset stays raw, which keeps both this walk and the later write cheap.
        """
        if "SpecificCharacterSet" in ds:
            self.encodings = convert_encodings(ds.SpecificCharacterSet)
        if meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            self.uids[str(meta.MediaStorageSOPInstanceUID)] = "original_uid"
        nhs_tag = tag_for_keyword(nhs_keyword)
        self.nhs_tag = int(nhs_tag) if nhs_tag is not None else -1
        self._collect(ds, self.nhs_tag, self.encodings, True)

    def _collect(self, ds: Dataset, nhs_tag: int, encodings: list[str], top: bool) -> None:
        if _CHARSET in ds:  # an item may set its own character set (PS3.5 7.5.3)
            encodings = convert_encodings(ds[_CHARSET].value)
        for tag in list(ds.keys()):
            t = int(tag)
            vr = ds._dict[tag].VR
            if vr is None or vr == "UN":
                vr = _dict_vr(t) or vr
            if vr == "SQ":
                value = ds[tag].value
                for item in value if isinstance(value, Sequence) else ():
                    self._collect(item, nhs_tag, encodings, False)
            elif vr == "PN":
                names = _values(ds, tag, vr, encodings)
                for name in names:
                    self.add_name(name)
                if top and t == _PATIENT_NAME:
                    self.patient[t] = names[0] if names else ""
            elif t == nhs_tag or t in _INTEREST:
                values = _values(ds, tag, vr, encodings)
                if top:  # who the instance says the patient is (``identity``)
                    self.patient[t] = values[0] if values else ""
                self._collect_value(t, values, nhs_tag)

    def _collect_value(self, t: int, values: list[str], nhs_tag: int) -> None:
        kw = _INTEREST_KEYWORDS.get(t) or keyword_for_tag(t)
        for v in values:
            if t == nhs_tag:
                self.add_nhs(v)
                self.add(v, "patient_id", 3)
            if kw in ID_KEYWORDS:
                self.add(v, ID_KEYWORDS[kw], 3)
                if nhs_number_valid(v):
                    self.add_nhs(v)
            elif kw in ADDRESS_KEYWORDS:
                self.add(v, ADDRESS_KEYWORDS[kw], 3)
                for word in _TOKEN_SPLIT.split(v):
                    if len(word) >= 4 and word.isalpha() and fold(word) not in ADDRESS_STOPWORDS:
                        self.add(word, ADDRESS_KEYWORDS[kw])
            elif kw in PHONE_KEYWORDS:
                digits = re.sub(r"[^0-9]", "", v)
                if len(digits) >= 6:
                    self.values.setdefault(_PHONE + digits, PHONE_KEYWORDS[kw])
                    self._scanners = None
            elif kw == "PatientBirthDate":
                self.add_birth_date(v)
            elif kw in UID_KEYWORDS:
                self.uids[v] = "original_uid"

    # -- scanners -------------------------------------------------------------------------
    def _compiled(self) -> Scanners:
        scanners = self._scanners
        if scanners is None:
            key = (tuple(sorted(self.values.items())), tuple(self.encodings))
            scanners = self._scanners = compiled_scanners(key)
            self._literals = dict(scanners.byte_literals)
            # UIDs are ASCII: the raw byte scan sees every one of them, wherever it hides.
            for uid in self.uids:
                encoded = uid.encode("ascii", "replace")
                self._literals.setdefault(encoded, ("original_uid", False, False))
        return scanners

    def byte_literals(self) -> tuple[tuple[bytes, tuple[str, bool, bool]], ...]:
        """The patient's identifiers of 3+ characters as lower-cased bytes in every encoding
        ``search_bytes`` tries (as written and folded), with (kind, left, right); not the
        instance's ``uids``. The same tuple object for every instance of a patient (cached)."""
        return self._compiled().byte_literals

    def digit_strings(self) -> list[tuple[str, str]]:
        """(digits, kind) of the patient's phone and NHS numbers (searched as bare digits in
        pixel data)."""
        return [
            (k.split(":", 1)[1], kind)
            for k, kind in self.values.items()
            if k.startswith((_PHONE, _NHS))
        ]

    def kind_of(self, match: str) -> str:
        key = match.casefold()
        if key in self.values:
            return self.values[key]
        digits = re.sub(r"[^0-9]", "", key)
        return self.values.get(_PHONE + digits) or self.values.get(_NHS + digits, "identifier")

    def search_identifiers(self, text: str, min_len: int = 1) -> str | None:
        """Kind of the first of the instance's identifiers found in `text`, else None.

        Folded (``fold``) on both sides, on word boundaries where the value starts or ends
        with an ASCII letter or digit (so CJK tokens match as substrings); then the patient's
        phone and NHS numbers in any grouping and the birth date in any spelling. Literal
        ``str.find`` per value: a single alternation regex with look-behinds is ~25x slower.
        """
        return self.search_folded(fold(text), min_len)

    def search_folded(self, low: str, min_len: int = 1) -> str | None:
        """``search_identifiers`` on text already folded (``fold``)."""
        found = search(self._compiled(), low, min_len)
        if found is None:
            return None
        kind, match = found
        return kind or self.kind_of(match)

    def search_text(self, text: str) -> str | None:
        """Kind of the first identifier or pattern found in a free-text value, else None."""
        low = fold(text)
        kind = self.search_folded(low)
        if kind:
            return kind
        if text.strip() in self.own_values:
            return None
        return pattern_kind(low)

    def search_value(self, text: str, vr: str) -> str | None:
        low = fold(text)
        kind = self.search_folded(low)
        if kind:
            return kind
        if vr in FREE_TEXT_VRS and text.strip() not in self.own_values:
            return pattern_kind(low)
        return None

    def search_bytes(self, data: bytes) -> str | None:
        """Kind of the first identifier found in raw bytes, else None.

        Literal ``bytes.find`` on the ASCII-lowercased data (patterns lowercased the same
        way, so ISO 2022 escapes still line up), then a boundary check: much faster than
        one big alternation regex. The literals include the folded spellings, so an
        accent-free copy of a name (``MULLER``) is found as well as the name as written.
        """
        scanners = self._compiled()
        low = data.lower()
        for literal, (kind, left, right) in self._literals.items():
            start = low.find(literal)
            while start != -1:
                end = start + len(literal)
                if kind == "original_uid":
                    ok_l = start == 0 or low[start - 1] not in _UID_CHARS
                    ok_r = end == len(low) or low[end] not in _DIGITS
                else:
                    ok_l = not left or start == 0 or low[start - 1] not in _ALNUM
                    ok_r = not right or end == len(low) or low[end] not in _ALNUM
                if ok_l and ok_r:
                    return kind
                start = low.find(literal, start + 1)
        if scanners.digits_bytes is not None:
            m = scanners.digits_bytes.search(data)
            if m:
                return self.kind_of(m.group().decode("ascii", "replace"))
        return None
