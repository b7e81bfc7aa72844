"""Receipts in the data: what was done to the instance, in the attributes PS3.15 defines."""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .table import CODE_VERSION, TABLE_EDITION

#: CID 7050 De-identification Method codes (DCM).
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
#: Recorded when a mask rule blanked burned-in text (the only pixel cleaning we do).
CLEAN_PIXEL_CODE = ("113101", "Clean Pixel Data Option")
OPTION_CODES: dict[str, tuple[str, str]] = {
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_full_dates": (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    "retain_longitudinal_modified_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}


def method_codes(options: Iterable[str], pixels_masked: bool = False) -> list[tuple[str, str]]:
    """Basic profile first, then the enabled options (and pixel cleaning) in code order."""
    codes = [OPTION_CODES[o] for o in options if o in OPTION_CODES]
    if pixels_masked:
        codes.append(CLEAN_PIXEL_CODE)
    return [BASIC_PROFILE_CODE] + sorted(codes)


def add_receipts(
    ds: Dataset,
    options: frozenset[str],
    key_version: str,
    date_mode: str,
    mask_rule: str | None = None,
) -> None:
    """Patient Identity Removed, De-identification Method (+ code sequence), and
    Longitudinal Temporal Information Modified. `mask_rule`: the name of the mask rule
    that blanked burned-in text ("" for an unnamed rule; None when not masked)."""
    ds.PatientIdentityRemoved = "YES"
    method = [
        f"SMARTBOX DEID {CODE_VERSION}",
        f"{TABLE_EDITION} E.1-1",
        f"KEY {key_version}",
    ]
    if mask_rule is not None:
        method.append(f"PIXELS MASKED {mask_rule}".strip()[:64])
    ds.DeidentificationMethod = method
    items = []
    for value, meaning in method_codes(options, mask_rule is not None):
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    ds.LongitudinalTemporalInformationModified = {
        "shift": "MODIFIED",
        "keep": "UNMODIFIED",
        "empty": "REMOVED",
    }[date_mode]
