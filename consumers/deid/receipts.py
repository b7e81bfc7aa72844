"""Receipts in the data: what was done to the instance, in the attributes PS3.15 defines."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from pydicom.dataelem import DataElement
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


#: the text values receipts and dummies write (no person's name is in them)
OWN_TEXTS = frozenset(
    [meaning for _code, meaning in (BASIC_PROFILE_CODE, CLEAN_PIXEL_CODE, *OPTION_CODES.values())]
    + ["DCM", "REMOVED", "ANONYMOUS", "YES", f"{TABLE_EDITION} E.1-1"]
)
#: how the De-identification Method values we write begin (a mask rule's name is the
#: trust's configuration, not patient data)
OWN_PREFIXES = ("SMARTBOX DEID ", "KEY ", "PIXELS MASKED", "OVERLAY BITS CLEARED ")


def is_own_text(text: str) -> bool:
    """Whether `text` is one of the values our receipts and dummies write."""
    return text in OWN_TEXTS or text.startswith(OWN_PREFIXES)


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
    bits_cleared: int = 0,
) -> None:
    """Patient Identity Removed, De-identification Method (+ code sequence), and
    Longitudinal Temporal Information Modified. `mask_rule`: the name of the mask rule
    that blanked burned-in text ("" for an unnamed rule; None when not masked);
    `bits_cleared`: samples whose bits outside Bits Stored were cleared.

    The elements are the same for every instance of a policy, so they are built once per
    set of arguments (``_receipts``) and the same element objects go into every output:
    nothing downstream changes them (the writer and the gate only read; ``names.clean_names``
    leaves our own texts alone), and ``tests/unit/deid/test_receipts.py`` checks that outputs
    do not share what they should not."""
    # by tag, straight into the dataset: setting attributes by keyword costs a dictionary
    # look-up each, and this runs for every instance
    for tag, elem in _receipts(options, key_version, date_mode, mask_rule, bits_cleared):
        ds[tag] = elem


@lru_cache(maxsize=256)
def _receipts(
    options: frozenset[str],
    key_version: str,
    date_mode: str,
    mask_rule: str | None,
    bits_cleared: int,
) -> tuple[tuple[int, DataElement], ...]:
    method = [
        f"SMARTBOX DEID {CODE_VERSION}",
        f"{TABLE_EDITION} E.1-1",
        f"KEY {key_version}",
    ]
    if mask_rule is not None:
        method.append(f"PIXELS MASKED {mask_rule}".strip()[:64])
    if bits_cleared:
        method.append(f"OVERLAY BITS CLEARED {bits_cleared}")
    items = []
    for value, meaning in method_codes(options, mask_rule is not None):
        item = Dataset()
        item[0x00080100] = DataElement(0x00080100, "SH", value)  # Code Value
        item[0x00080102] = DataElement(0x00080102, "SH", "DCM")  # Coding Scheme Designator
        item[0x00080104] = DataElement(0x00080104, "LO", meaning)  # Code Meaning
        items.append(item)
    longitudinal = {"shift": "MODIFIED", "keep": "UNMODIFIED", "empty": "REMOVED"}[date_mode]
    return (
        (0x00120062, DataElement(0x00120062, "CS", "YES")),  # Patient Identity Removed
        (0x00120063, DataElement(0x00120063, "LO", method)),  # De-identification Method
        (0x00120064, DataElement(0x00120064, "SQ", Sequence(items))),  # its code sequence
        # Longitudinal Temporal Information Modified
        (0x00280303, DataElement(0x00280303, "CS", longitudinal)),
    )
