"""The pixel gate: hold back instances that may carry identifying text in their pixels.

Checked on the source instance before anything is written. A held-back instance is never
staged or exported; it is counted under its reason.

Masking (``DeidPolicy.mask_rules``: blank a known rectangle for a device signature and
produce the masked output) is a hook only: rules are matched but not applied yet, so an
instance that would need one is still held back, with reason ``mask_rule_not_implemented``.
No OCR verifier yet.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from .config import DeidPolicy, MaskRule

HELD_MODALITIES = frozenset({"US", "SC", "OT", "DOC", "XC", "IVUS"})

_SC = "1.2.840.10008.5.1.4.1.1.7"
HELD_SOP_CLASS_PREFIXES = (
    _SC,  # Secondary Capture and the multi-frame SC classes (.7.1 - .7.4)
    "1.2.840.10008.5.1.4.1.1.104.",  # Encapsulated PDF, CDA, STL, OBJ, MTL
    "1.2.840.10008.5.1.4.1.1.6.",  # Ultrasound (single and multi-frame)
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic (+ video photographic): faces
)

#: ImageType values that mean "a picture of a screen or a report", where text is usual.
SCREEN_VALUES = frozenset({"SCREEN SAVE", "SCREENSHOT", "SCREEN_SAVE", "CAPTURE", "SCREEN"})
DOSE_VALUES = frozenset({"DOSE_INFO", "DOSE INFO", "DOSE REPORT", "DOSE_REPORT", "DOSE"})
#: SECONDARY images that are geometric reconstructions of acquired data, not screens.
RECONSTRUCTION_VALUES = frozenset(
    {
        "REFORMATTED",
        "MPR",
        "MIP",
        "MINIP",
        "AVERAGE",
        "PROJECTION IMAGE",
        "CPR",
        "VOLUME",
        "CURVED",
        "RESAMPLED",
        "SUBTRACTION",
        "LOCALIZER",
    }
)

#: (manufacturer, model) of devices known to burn text into every image, upper-case.
#: Empty until a trust reports one; extend per deployment.
BURN_IN_DEVICES: frozenset[tuple[str, str]] = frozenset()


def _upper(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip().upper() if value is not None else ""


def matching_mask_rule(ds: Dataset, rules: tuple[MaskRule, ...]) -> MaskRule | None:
    """The configured mask rule for this instance's device and image size, if any."""
    maker, model = _upper(ds, "Manufacturer"), _upper(ds, "ManufacturerModelName")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    for rule in rules:
        if (rule.manufacturer.upper(), rule.model.upper()) == (maker, model) and (
            rule.rows,
            rule.columns,
        ) == (rows, cols):
            return rule
    return None


def pixel_gate(ds: Dataset, policy: DeidPolicy) -> str | None:
    """Reason to hold back `ds` because of what its pixels may show, else None."""
    reason = _reason(ds)
    if reason and matching_mask_rule(ds, policy.mask_rules) is not None:
        return "mask_rule_not_implemented"
    return reason


def _reason(ds: Dataset) -> str | None:
    burned = _upper(ds, "BurnedInAnnotation")
    if burned and burned != "NO":
        return "burned_in_annotation"
    if _upper(ds, "RecognizableVisualFeatures") == "YES":
        return "recognizable_visual_features"
    if _upper(ds, "Modality") in HELD_MODALITIES:
        return "modality_not_allowed"
    sop_class = str(ds.get("SOPClassUID", ""))
    if any(
        sop_class == p
        or sop_class.startswith(p + ".")
        or (p.endswith(".") and sop_class.startswith(p))
        for p in HELD_SOP_CLASS_PREFIXES
    ):
        return "sop_class_not_allowed"
    image_type = ds.get("ImageType")
    if image_type:
        values = [
            str(v).strip().upper()
            for v in (image_type if not isinstance(image_type, str) else image_type.split("\\"))
        ]
        if SCREEN_VALUES.intersection(values):
            return "image_type_screen_save"
        if DOSE_VALUES.intersection(values):
            return "image_type_dose_report"
        if "SECONDARY" in values[1:2] and not RECONSTRUCTION_VALUES.intersection(values[2:]):
            return "image_type_secondary"
    device = (_upper(ds, "Manufacturer"), _upper(ds, "ManufacturerModelName"))
    if device in BURN_IN_DEVICES:
        return "device_burns_in_text"
    return None
