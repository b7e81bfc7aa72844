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
from functools import lru_cache

from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import TEXT_VR_DELIMS

from .pseudonyms import nhs_number_valid

FREE_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
STRING_VRS = FREE_TEXT_VRS | {"UR", "AE", "CS", "DA", "DT", "TM", "AS", "IS", "DS", "UI"}

NHS_PATTERN = re.compile(r"(?<![0-9])([0-9]{3})[ -]?([0-9]{3})[ -]?([0-9]{4})(?![0-9])")
POSTCODE_PATTERN = re.compile(
    r"(?<![A-Za-z0-9])(?:GIR ?0AA|"
    r"[A-PR-UWYZ][A-HK-Y]?[0-9][0-9A-HJKMNPR-Y]? ?[0-9][ABD-HJLNP-UW-Z]{2})"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
PHONE_PATTERN = re.compile(r"(?<![0-9+])(?:\+44 ?\(?0?\)? ?|0)[1-9](?:[ -]?[0-9]){8,9}(?![0-9])")

#: Words of our own receipts and dummies: a name token equal to one of them is not evidence
#: of a leak (the patient "Mr Basic" would otherwise be held back forever).
OWN_VOCABULARY = frozenset(
    """anonymous removed smartbox deid basic application confidentiality profile retain
    longitudinal temporal information modified dates option patient characteristics safe
    private full uids device identity institution clean descriptors structured content
    graphics annex key yes urn dcm pixel pixels data masked mask""".split()
)

# Which source attributes are identifying, and as what kind (keyword -> kind).
ID_KEYWORDS = {
    "PatientID": "patient_id",
    "OtherPatientIDs": "other_patient_id",
    "AccessionNumber": "accession_number",
    "StudyID": "study_id",
    "MedicalRecordLocator": "patient_id",
    "InstitutionName": "institution",
    "InstitutionalDepartmentName": "institution",
    "StationName": "station_name",
    "DeviceSerialNumber": "device_serial",
    "AdmissionID": "patient_id",
    "PerformedProcedureStepID": "study_id",
    "RequestedProcedureID": "study_id",
    "FillerOrderNumberImagingServiceRequest": "accession_number",
    "PlacerOrderNumberImagingServiceRequest": "accession_number",
}
ADDRESS_KEYWORDS = {
    "PatientAddress": "address",
    "InstitutionAddress": "institution_address",
    "ReferringPhysicianAddress": "address",
    "PersonAddress": "address",
}
PHONE_KEYWORDS = {
    "PatientTelephoneNumbers": "phone_number",
    "ReferringPhysicianTelephoneNumbers": "phone_number",
    "PersonTelephoneNumbers": "phone_number",
}
UID_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "MediaStorageSOPInstanceUID",
)
#: Every kind the scanners can return (each has its ``Reason.verification(kind)``).
KINDS = frozenset(
    {*ID_KEYWORDS.values(), *ADDRESS_KEYWORDS.values(), *PHONE_KEYWORDS.values()}
    | {"person_name", "nhs_number", "birth_date", "original_uid", "identifier"}
    | {"nhs_number_pattern", "postcode_pattern", "phone_pattern"}
)
_INTEREST = frozenset(
    int(tag_for_keyword(kw) or 0)
    for kw in (*ID_KEYWORDS, *ADDRESS_KEYWORDS, *PHONE_KEYWORDS, *UID_KEYWORDS, "PatientBirthDate")
)
ADDRESS_STOPWORDS = frozenset(
    """road street avenue lane close drive house flat court place square crescent way
    hill park green view gardens north south east west upper lower united kingdom""".split()
)
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
#: VRs pydicom decodes with the instance's character set; other string VRs are ASCII.
_CHARSET_VRS = frozenset({"PN", "SH", "LO", "ST", "LT", "UC", "UT"})
_STRING_VRS = _CHARSET_VRS | {"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "IS", "DS"}
_SINGLE_VALUED = frozenset({"ST", "LT", "UT", "UR"})


def _values(ds: Dataset, tag: int, vr: str | None, encodings: list[str]) -> list[str]:
    """The string values of one element, decoded straight from its raw bytes when it is
    still raw (as pydicom would decode them, without converting the element: it is about
    to be removed or replaced anyway), else from its value."""
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes) and vr in _STRING_VRS:
        if vr in _CHARSET_VRS:
            text = decode_bytes(elem.value, encodings, TEXT_VR_DELIMS)
        else:
            text = elem.value.decode("latin-1")
        parts = [text] if vr in _SINGLE_VALUED else text.split("\\")
        return [p for p in (part.strip("\0 ") for part in parts) if p]
    return list(_strings(ds[tag].value))


def birth_date_spellings(da: str) -> list[str]:
    """A DA value in the spellings people type (ISO, UK day-first, dotted)."""
    da = da.strip()
    if len(da) != 8 or not da.isdigit():
        return [da] if da else []
    y, m, d = da[:4], da[4:6], da[6:]
    return [
        da,
        f"{y}-{m}-{d}",
        f"{y}/{m}/{d}",
        f"{y}.{m}.{d}",
        f"{d}/{m}/{y}",
        f"{d}-{m}-{y}",
        f"{d}.{m}.{y}",
        f"{d}{m}{y}",
    ]


class Identifiers:
    """The identifying values of one source instance, and fast scanners for them."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}  # casefolded value -> kind
        self.uids: dict[str, str] = {}
        self.encodings: list[str] = ["iso8859"]
        self._text_literals: tuple[tuple[str, str, bool, bool], ...] = ()
        self._phone_text_re: re.Pattern[str] | None = None
        self._phone_bytes_re: re.Pattern[bytes] | None = None
        self._literals: dict[bytes, tuple[str, bool, bool]] = {}
        self._patient_literals: tuple[tuple[bytes, tuple[str, bool, bool]], ...] = ()
        self._compiled = False
        #: values we generated ourselves (the patient pseudonym: 32 hex digits, which can look
        #: like a phone or NHS number by chance); exempt from the generic patterns only
        self.own_values: set[str] = set()

    # -- collection -----------------------------------------------------------------------
    def add(self, value: str, kind: str, min_len: int = 2) -> None:
        value = value.strip()
        if len(value) >= min_len and value.casefold() not in OWN_VOCABULARY:
            self.values.setdefault(value.casefold(), kind)

    def add_name(self, name: str) -> None:
        for token in _TOKEN_SPLIT.split(name):
            self.add(token, "person_name")

    def add_nhs(self, value: str) -> None:
        digits = nhs_number_valid(value) or re.sub(r"[\s-]", "", value)
        self.add(digits, "nhs_number", 3)
        if len(digits) == 10:
            self.add(f"{digits[:3]} {digits[3:6]} {digits[6:]}", "nhs_number")
            self.add(f"{digits[:3]}-{digits[3:6]}-{digits[6:]}", "nhs_number")

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
        self._collect(ds, int(nhs_tag) if nhs_tag is not None else -1, self.encodings)

    def _collect(self, ds: Dataset, nhs_tag: int, encodings: list[str]) -> None:
        if _CHARSET in ds:  # an item may set its own character set (PS3.5 7.5.3)
            encodings = convert_encodings(ds[_CHARSET].value)
        for tag in list(ds.keys()):
            t = int(tag)
            vr = ds.get_item(tag).VR
            if vr is None or vr == "UN":
                vr = _dict_vr(t) or vr
            if vr == "SQ":
                value = ds[tag].value
                for item in value if isinstance(value, Sequence) else ():
                    self._collect(item, nhs_tag, encodings)
            elif vr == "PN":
                for name in _values(ds, t, vr, encodings):
                    self.add_name(name)
            elif t == nhs_tag or t in _INTEREST:
                self._collect_value(t, _values(ds, t, vr, encodings), nhs_tag)

    def _collect_value(self, t: int, values: list[str], nhs_tag: int) -> None:
        kw = keyword_for_tag(t)
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
                    if len(word) >= 4 and word.isalpha() and word.lower() not in ADDRESS_STOPWORDS:
                        self.add(word, ADDRESS_KEYWORDS[kw])
            elif kw in PHONE_KEYWORDS:
                digits = re.sub(r"[^0-9]", "", v)
                if len(digits) >= 6:
                    self.values.setdefault("phone:" + digits, PHONE_KEYWORDS[kw])
            elif kw == "PatientBirthDate":
                for spelling in birth_date_spellings(v):
                    self.add(spelling, "birth_date", 6)
            elif kw in UID_KEYWORDS:
                self.uids[v] = "original_uid"

    # -- scanners -------------------------------------------------------------------------
    def _compile(self) -> None:
        key = (tuple(sorted(self.values.items())), tuple(self.encodings))
        scanners = _compiled_scanners(key)
        self._text_literals, self._phone_text_re, self._phone_bytes_re, literals = scanners
        self._patient_literals = literals
        self._literals = dict(literals)
        # UIDs are ASCII: the raw byte scan sees every one of them, wherever it hides.
        for uid in self.uids:
            encoded = uid.encode("ascii", "replace")
            self._literals.setdefault(encoded, ("original_uid", False, False))
        self._compiled = True

    def byte_literals(self) -> tuple[tuple[bytes, tuple[str, bool, bool]], ...]:
        """The patient's identifiers of 3+ characters as lower-cased bytes in every encoding
        ``search_bytes`` tries, with (kind, left, right); not the instance's ``uids``. The
        same tuple object for every instance of a patient (cached)."""
        if not self._compiled:
            self._compile()
        return self._patient_literals

    def kind_of(self, match: str) -> str:
        key = match.casefold()
        if key in self.values:
            return self.values[key]
        digits = re.sub(r"[^0-9]", "", key)
        return self.values.get("phone:" + digits, "identifier")

    def search_identifiers(self, text: str, min_len: int = 1) -> str | None:
        """Kind of the first of the instance's identifiers found in `text`, else None.

        Case-insensitive (full case folding), on word boundaries where the value starts or
        ends with an ASCII letter or digit (so CJK tokens match as substrings). Literal
        ``str.find`` per value: a single alternation regex with look-behinds is ~25x slower.
        """
        if not self._compiled:
            self._compile()
        low = text.casefold()
        size = len(low)
        for literal, kind, left, right in self._text_literals:
            if len(literal) < min_len:
                continue
            start = low.find(literal)
            while start != -1:
                end = start + len(literal)
                if (not left or start == 0 or not low[start - 1].isalnum()) and (
                    not right or end == size or not low[end].isalnum()
                ):
                    return kind
                start = low.find(literal, start + 1)
        if self._phone_text_re is not None:
            m = self._phone_text_re.search(text)
            if m:
                return self.kind_of(m.group())
        return None

    def search_text(self, text: str) -> str | None:
        """Kind of the first identifier or pattern found in a free-text value, else None."""
        kind = self.search_identifiers(text)
        if kind:
            return kind
        if text.strip() in self.own_values:
            return None
        return pattern_kind(text)

    def search_value(self, text: str, vr: str) -> str | None:
        kind = self.search_identifiers(text)
        if kind:
            return kind
        if vr in FREE_TEXT_VRS and text.strip() not in self.own_values:
            return pattern_kind(text)
        return None

    def search_bytes(self, data: bytes) -> str | None:
        """Kind of the first identifier found in raw bytes, else None.

        Literal ``bytes.find`` on the ASCII-lowercased data (patterns lowercased the same
        way, so ISO 2022 escapes still line up), then a boundary check: much faster than
        one big alternation regex.
        """
        if not self._compiled:
            self._compile()
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
        if self._phone_bytes_re is not None:
            m = self._phone_bytes_re.search(data)
            if m:
                return self.kind_of(m.group().decode("ascii", "replace"))
        return None


def _encodings_of(value: str, encodings: tuple[str, ...]) -> set[bytes]:
    """`value` as it may appear in the file: UTF-8, Latin-1, the instance's charsets."""
    out = {value.encode("utf-8")}
    for variant in (value, value.upper()):
        try:
            out.add(variant.encode("latin-1"))
        except UnicodeEncodeError:
            pass
        try:
            out.add(encode_string(variant, list(encodings)))
        except (UnicodeError, LookupError, ValueError):
            pass
    return out


_Scanners = tuple[
    tuple[tuple[str, str, bool, bool], ...],
    re.Pattern[str] | None,
    re.Pattern[bytes] | None,
    tuple[tuple[bytes, tuple[str, bool, bool]], ...],
]


@lru_cache(maxsize=256)
def _compiled_scanners(
    key: tuple[tuple[tuple[str, str], ...], tuple[str, ...]],
) -> _Scanners:
    """Scanners for one patient's identifiers; cached because a study repeats them."""
    values, encodings = key
    text_literals: list[tuple[str, str, bool, bool]] = []
    phone_parts: list[str] = []
    literals: dict[bytes, tuple[str, bool, bool]] = {}
    for value, kind in sorted(values, key=lambda vk: len(vk[0]), reverse=True):
        if value.startswith("phone:"):
            pattern = r"[ ()+-]*".join(re.escape(d) for d in value[6:])
            phone_parts.append(rf"(?<![0-9]){pattern}(?![0-9])")
            continue
        left = value[0].isascii() and value[0].isalnum()
        right = value[-1].isascii() and value[-1].isalnum()
        text_literals.append((value.casefold(), kind, left, right))
        if len(value) >= 3:
            for encoded in _encodings_of(value, encodings):
                literals.setdefault(encoded.lower(), (kind, left, right))
    phone_text = re.compile("|".join(phone_parts)) if phone_parts else None
    phone_bytes = re.compile("|".join(phone_parts).encode()) if phone_parts else None
    return tuple(text_literals), phone_text, phone_bytes, tuple(literals.items())


def pattern_kind(text: str) -> str | None:
    """``nhs_number_pattern`` / ``postcode_pattern`` / ``phone_pattern`` or None."""
    for m in NHS_PATTERN.finditer(text):
        if nhs_number_valid("".join(m.groups())):
            return "nhs_number_pattern"
    if POSTCODE_PATTERN.search(text):
        return "postcode_pattern"
    if PHONE_PATTERN.search(text):
        return "phone_pattern"
    return None
