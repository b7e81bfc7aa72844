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
from collections.abc import Iterable, Iterator
from io import BytesIO

from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
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
    "IssuerOfPatientID": None,
    "AccessionNumber": "accession_number",
    "StudyID": "study_id",
    "MedicalRecordLocator": "patient_id",
    "InstitutionName": "institution",
    "InstitutionalDepartmentName": "institution",
    "StationName": "station_name",
    "DeviceSerialNumber": "device_serial",
    "PatientInsurancePlanCodeSequence": None,
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
    "CountryOfResidence": None,
    "RegionOfResidence": None,
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
ADDRESS_STOPWORDS = frozenset(
    """road street avenue lane close drive house flat court place square crescent way
    hill park green view gardens north south east west upper lower united kingdom""".split()
)
_TOKEN_SPLIT = re.compile(r"[\^=\s,.;:/()\"'\-]+")


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
        self._uid_re: re.Pattern[str] | None = None
        self._bytes_re: re.Pattern[bytes] | None = None

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
        """Collect from `ds` at every depth (and from the source file meta)."""
        if "SpecificCharacterSet" in ds:
            self.encodings = convert_encodings(ds.SpecificCharacterSet)
        if meta is not None:
            for elem in meta:
                if elem.keyword == "MediaStorageSOPInstanceUID" and elem.value:
                    self.uids[str(elem.value)] = "original_uid"
        self._collect(ds, nhs_keyword)

    def _collect(self, ds: Dataset, nhs_keyword: str) -> None:
        for elem in ds:
            vr, kw = elem.VR, elem.keyword
            if vr == "SQ":
                for item in elem.value or ():
                    self._collect(item, nhs_keyword)
                continue
            if vr == "PN":
                for name in _strings(elem.value):
                    self.add_name(name)
                continue
            if kw == nhs_keyword:
                for v in _strings(elem.value):
                    self.add_nhs(v)
                    self.add(v, "patient_id", 3)
            if kw in ID_KEYWORDS and ID_KEYWORDS[kw]:
                for v in _strings(elem.value):
                    self.add(v, ID_KEYWORDS[kw], 3)
                    if nhs_number_valid(v):
                        self.add_nhs(v)
            elif kw in ADDRESS_KEYWORDS and ADDRESS_KEYWORDS[kw]:
                for v in _strings(elem.value):
                    self.add(v, ADDRESS_KEYWORDS[kw], 3)
                    for word in _TOKEN_SPLIT.split(v):
                        if (
                            len(word) >= 4
                            and word.isalpha()
                            and word.lower() not in ADDRESS_STOPWORDS
                        ):
                            self.add(word, ADDRESS_KEYWORDS[kw])
            elif kw in PHONE_KEYWORDS:
                for v in _strings(elem.value):
                    digits = re.sub(r"[^0-9]", "", v)
                    if len(digits) >= 6:
                        self.values.setdefault("phone:" + digits, PHONE_KEYWORDS[kw])
            elif kw == "PatientBirthDate":
                for v in _strings(elem.value):
                    for spelling in birth_date_spellings(v):
                        self.add(spelling, "birth_date", 6)
            elif kw in UID_KEYWORDS:
                for v in _strings(elem.value):
                    self.uids[v] = "original_uid"

    # -- scanners -------------------------------------------------------------------------
    def _compile(self) -> None:
        text_parts, byte_parts = [], []
        for value in sorted(self.values, key=len, reverse=True):
            if value.startswith("phone:"):
                digits = value[6:]
                pattern = r"[ ()+-]*".join(re.escape(d) for d in digits)
                text_parts.append(rf"(?<![0-9]){pattern}(?![0-9])")
                byte_parts.append(rf"(?<![0-9]){pattern}(?![0-9])".encode())
                continue
            esc = re.escape(value)
            left = r"(?<![^\W_])" if value[0].isalnum() and value[0].isascii() else ""
            right = r"(?![^\W_])" if value[-1].isalnum() and value[-1].isascii() else ""
            text_parts.append(f"{left}{esc}{right}")
            if len(value) >= 3:
                for encoded in self._encodings_of(value):
                    b_left = rb"(?<![A-Za-z0-9])" if left else b""
                    b_right = rb"(?![A-Za-z0-9])" if right else b""
                    byte_parts.append(b_left + re.escape(encoded) + b_right)
        self._text_re = re.compile("|".join(text_parts), re.IGNORECASE) if text_parts else None
        self._bytes_re = (
            re.compile(b"|".join(dict.fromkeys(byte_parts)), re.IGNORECASE) if byte_parts else None
        )
        uid_parts = [rf"(?<![0-9.]){re.escape(u)}(?![0-9])" for u in self.uids]
        self._uid_re = re.compile("|".join(uid_parts)) if uid_parts else None

    def _encodings_of(self, value: str) -> Iterable[bytes]:
        out = {value.encode("utf-8")}
        for variant in (value, value.upper()):
            for codec in ("latin-1",):
                try:
                    out.add(variant.encode(codec))
                except UnicodeEncodeError:
                    pass
            try:
                out.add(encode_string(variant, self.encodings))
            except (UnicodeError, LookupError, ValueError):
                pass
        return out

    def kind_of(self, match: str) -> str:
        key = match.casefold()
        if key in self.values:
            return self.values[key]
        digits = re.sub(r"[^0-9]", "", key)
        return self.values.get("phone:" + digits, "identifier")

    def search_text(self, text: str) -> str | None:
        """Kind of the first identifier or pattern found in a free-text value, else None."""
        if self._text_re is None and self.values:
            self._compile()
        if self._text_re is not None:
            m = self._text_re.search(text)
            if m:
                return self.kind_of(m.group())
        return pattern_kind(text)

    def search_value(self, text: str, vr: str) -> str | None:
        if self._text_re is None and (self.values or self.uids):
            self._compile()
        if self._text_re is not None:
            m = self._text_re.search(text)
            if m:
                return self.kind_of(m.group())
        if self._uid_re is not None and self._uid_re.search(text):
            return "original_uid"
        if vr in FREE_TEXT_VRS:
            return pattern_kind(text)
        return None

    def search_bytes(self, data: bytes) -> str | None:
        if self._bytes_re is None and self.values:
            self._compile()
        if self._bytes_re is not None:
            m = self._bytes_re.search(data)
            if m:
                return self.kind_of(m.group().decode("utf-8", "replace"))
        if self._uid_re is not None:
            # UIDs are ASCII; the same pattern works on the bytes decoded as Latin-1.
            if self._uid_re.search(data.decode("latin-1")):
                return "original_uid"
        return None


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
    """Kind of the first hit in any value at any depth of `ds`, else None."""
    for elem in ds:
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value or ():
                kind = scan_dataset(item, ids)
                if kind:
                    return kind
        elif vr in STRING_VRS:
            value = elem.value
            if isinstance(value, PersonName):
                value = str(value)
            for text in _strings(value):
                kind = ids.search_value(text, vr)
                if kind:
                    return kind
        elif isinstance(elem.value, bytes) and elem.tag != 0x7FE00010:
            kind = ids.search_bytes(elem.value)
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
