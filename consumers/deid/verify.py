"""The independent verification gate: does anything of the source patient survive?

It knows nothing about the table. From the *source* instance it collects identifying values
(every name token of every PN at any depth, patient IDs, the NHS number, birth date in
several spellings, accession number, institution, addresses, phone numbers, original
instance UIDs); then it scans the *output*:

* every element value at every depth, re-parsed from the written bytes (so a writer bug is
  caught too), case-insensitively and on word boundaries;
* the raw written bytes (file meta + dataset), for identifiers of 3 characters or more, in
  UTF-8, Latin-1 and the instance's own character sets; pixel data bytes are excluded
  (binary, and burned-in text is the pixel gate's job, not a byte search);
* NHS-number (10 digits passing modulus 11), UK-postcode and UK-phone patterns in every
  free-text value.

A hit returns its *kind* (never the value); the instance is then held back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from io import BytesIO

from pydicom.charset import convert_encodings, encode_string
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

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
    graphics annex key yes urn dcm""".split()
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
_INTEREST = frozenset(
    int(tag_for_keyword(kw))
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
        self._text_re: re.Pattern[str] | None = None
        self._phone_bytes_re: re.Pattern[bytes] | None = None
        self._literals: dict[bytes, tuple[str, bool, bool]] = {}
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
        self._collect(ds, int(nhs_tag) if nhs_tag is not None else -1)

    def _collect(self, ds: Dataset, nhs_tag: int) -> None:
        for tag in list(ds.keys()):
            t = int(tag)
            vr = ds.get_item(tag).VR
            if vr is None or vr == "UN":
                vr = _dict_vr(t) or vr
            if vr == "SQ":
                value = ds[tag].value
                for item in value if isinstance(value, Sequence) else ():
                    self._collect(item, nhs_tag)
            elif vr == "PN":
                for name in _strings(ds[tag].value):
                    self.add_name(name)
            elif t == nhs_tag or t in _INTEREST:
                self._collect_value(ds, t, nhs_tag)

    def _collect_value(self, ds: Dataset, t: int, nhs_tag: int) -> None:
        kw = ds[t].keyword
        values = list(_strings(ds[t].value))
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
        self._text_re, self._phone_bytes_re, literals = _compiled_scanners(key)
        self._literals = dict(literals)
        # UIDs are ASCII: the raw byte scan sees every one of them, wherever it hides.
        for uid in self.uids:
            encoded = uid.encode("ascii", "replace")
            self._literals.setdefault(encoded, ("original_uid", False, False))
        self._compiled = True

    def kind_of(self, match: str) -> str:
        key = match.casefold()
        if key in self.values:
            return self.values[key]
        digits = re.sub(r"[^0-9]", "", key)
        return self.values.get("phone:" + digits, "identifier")

    def search_text(self, text: str) -> str | None:
        """Kind of the first identifier or pattern found in a free-text value, else None."""
        if not self._compiled:
            self._compile()
        if self._text_re is not None:
            m = self._text_re.search(text)
            if m:
                return self.kind_of(m.group())
        if text.strip() in self.own_values:
            return None
        return pattern_kind(text)

    def search_value(self, text: str, vr: str) -> str | None:
        if not self._compiled:
            self._compile()
        if self._text_re is not None:
            m = self._text_re.search(text)
            if m:
                return self.kind_of(m.group())
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
    text_parts: list[str] = []
    phone_parts: list[bytes] = []
    literals: dict[bytes, tuple[str, bool, bool]] = {}
    for value, kind in sorted(values, key=lambda vk: len(vk[0]), reverse=True):
        if value.startswith("phone:"):
            pattern = r"[ ()+-]*".join(re.escape(d) for d in value[6:])
            text_parts.append(rf"(?<![0-9]){pattern}(?![0-9])")
            phone_parts.append(rf"(?<![0-9]){pattern}(?![0-9])".encode())
            continue
        left = value[0].isascii() and value[0].isalnum()
        right = value[-1].isascii() and value[-1].isalnum()
        bound_l, bound_r = (r"(?<![^\W_])" if left else ""), (r"(?![^\W_])" if right else "")
        text_parts.append(f"{bound_l}{re.escape(value)}{bound_r}")
        if len(value) >= 3:
            for encoded in _encodings_of(value, encodings):
                literals.setdefault(encoded.lower(), (kind, left, right))
    text_re = re.compile("|".join(text_parts), re.IGNORECASE) if text_parts else None
    phone_re = re.compile(b"|".join(phone_parts)) if phone_parts else None
    return text_re, phone_re, tuple(literals.items())


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


def scan_dataset(ds: Dataset, ids: Identifiers) -> str | None:
    """Kind of the first hit in any free-text value at any depth of `ds`, else None.

    Coded, numeric and binary values are left to the raw byte scan (``search_bytes``), which
    sees every byte of them anyway; decoding them here would only cost time.
    """
    for tag in list(ds.keys()):
        vr = ds.get_item(tag).VR
        if vr is None or vr == "UN":
            vr = _dict_vr(int(tag)) or vr
        if vr == "SQ":
            value = ds[tag].value
            for item in value if isinstance(value, Sequence) else ():
                kind = scan_dataset(item, ids)
                if kind:
                    return kind
        elif vr in FREE_TEXT_VRS or vr == "UR":
            value = ds[tag].value
            if isinstance(value, PersonName):
                value = str(value)
            for text in _strings(value):
                kind = ids.search_value(text, vr)
                if kind:
                    return kind
    return None


def verify_output(
    meta: Dataset, scan_bytes: bytes, body: bytes, implicit: bool, little: bool, ids: Identifiers
) -> str | None:
    """The gate: kind of the first surviving identifier in the output, else None.

    `scan_bytes` is the written file without its pixel data; `body` the encoded dataset
    (pixel data excluded, uncompressed even for deflated transfer syntaxes).
    """
    kind = ids.search_bytes(scan_bytes)
    if kind:
        return kind
    kind = scan_dataset(meta, ids)
    if kind:
        return kind
    parsed = read_dataset(BytesIO(body), implicit, little)
    return scan_dataset(parsed, ids)
