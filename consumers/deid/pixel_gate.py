"""The pixel gate: hold back instances that may carry identifying text in their pixels.

Checked on the source instance before anything is written. A held-back instance is never
staged or exported; it is counted under its reason.

A configured mask rule (``DeidPolicy.mask_rules``) for the instance's device and image size
turns "hold back" into "blank these rectangles and release" (``masking``), except for
reasons that rectangles cannot address (recognizable visual features) and instances without
pixel data to mask (encapsulated documents).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from .config import DeidPolicy, MaskRule
from .pixels import image_int
from .reasons import Reason

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
#: Reasons a mask rule cannot lift: rectangles do not remove a face.
UNMASKABLE = frozenset({Reason.RECOGNIZABLE_VISUAL_FEATURES})


@dataclass(frozen=True)
class DeviceSignature:
    """A device known to burn in text (``data/burned_in_devices.json``)."""

    manufacturer: str  # upper-case substring; "" = any
    model: str  # upper-case substring; "" = any
    modality: str | None = None
    rows: int | None = None
    columns: int | None = None

    def matches(self, maker: str, model: str, modality: str, rows: object, cols: object) -> bool:
        return (
            self.manufacturer in maker
            and self.model in model
            and (self.modality is None or self.modality == modality)
            and (self.rows is None or self.rows == rows)
            and (self.columns is None or self.columns == cols)
        )


@cache
def burn_in_devices() -> tuple[DeviceSignature, ...]:
    """The shipped device signatures (source and matching rules in ``data/README.md``)."""
    text = resources.files(__package__).joinpath("data", "burned_in_devices.json")
    doc = json.loads(text.read_text("utf-8"))
    return tuple(
        DeviceSignature(
            manufacturer=d.get("manufacturer", "").strip().upper(),
            model=d.get("model", "").strip().upper(),
            modality=d.get("modality"),
            rows=d.get("rows"),
            columns=d.get("columns"),
        )
        for d in doc["devices"]
    )


def _upper(ds: Dataset, keyword: str) -> str:
    """The attribute's value upper-cased, "" if absent. A value still raw is decoded from its
    bytes (Latin-1: every signature and keyword compared is ASCII) instead of converting
    the element, which would also make the writer re-encode it."""
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = _TAGS[keyword] = BaseTag(tag_for_keyword(keyword) or 0)
    elem = ds._dict.get(tag)
    if elem is None:
        return ""
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes) and elem.VR != "SQ":
        return elem.value.decode("latin-1").strip(" \0").strip().upper()
    value = ds[tag].value
    if isinstance(value, MultiValue | list | tuple):
        value = "\\".join(str(v) for v in value)
    return str(value).strip().upper() if value is not None else ""


_TAGS: dict[str, BaseTag] = {}


def matching_mask_rule(ds: Dataset, rules: tuple[MaskRule, ...]) -> MaskRule | None:
    """The first configured mask rule for this instance's device and image size, if any."""
    if not rules:
        return None
    maker, model = _upper(ds, "Manufacturer"), _upper(ds, "ManufacturerModelName")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    modality, sop_class = _upper(ds, "Modality"), str(ds.get("SOPClassUID", ""))
    for rule in rules:
        if rule.matches(maker, model, rows, cols, modality, sop_class):
            return rule
    return None


@dataclass(frozen=True)
class GateDecision:
    """``reason``: why the pixels may identify (None: nothing known); ``mask``: the rule to
    apply instead of holding back (None: hold back if there is a reason)."""

    reason: Reason | None
    mask: MaskRule | None = None


def decide(ds: Dataset, policy: DeidPolicy) -> GateDecision:
    """What to do about `ds`'s pixels: release, mask (then release), or hold back."""
    reason = _reason(ds)
    if reason in UNMASKABLE:
        return GateDecision(reason)
    rule = matching_mask_rule(ds, policy.mask_rules)
    return GateDecision(reason, rule)


def pixel_gate(ds: Dataset, policy: DeidPolicy) -> Reason | None:
    """Reason to hold back `ds` with no mask applied, else None (``decide`` for masking)."""
    decision = decide(ds, policy)
    return None if decision.mask is not None else decision.reason


def _reason(ds: Dataset) -> Reason | None:
    burned = _upper(ds, "BurnedInAnnotation")
    if burned and burned != "NO":
        return Reason.BURNED_IN_ANNOTATION
    if _upper(ds, "RecognizableVisualFeatures") == "YES":
        return Reason.RECOGNIZABLE_VISUAL_FEATURES
    modality = _upper(ds, "Modality")
    if modality in HELD_MODALITIES:
        return Reason.MODALITY_NOT_ALLOWED
    sop_class = _upper(ds, "SOPClassUID")
    if any(
        sop_class == p
        or sop_class.startswith(p + ".")
        or (p.endswith(".") and sop_class.startswith(p))
        for p in HELD_SOP_CLASS_PREFIXES
    ):
        return Reason.SOP_CLASS_NOT_ALLOWED
    image_type = _upper(ds, "ImageType")
    if image_type:
        values = [v.strip() for v in image_type.split("\\")]
        if SCREEN_VALUES.intersection(values):
            return Reason.IMAGE_TYPE_SCREEN_SAVE
        if DOSE_VALUES.intersection(values):
            return Reason.IMAGE_TYPE_DOSE_REPORT
        if "SECONDARY" in values[1:2] and not RECONSTRUCTION_VALUES.intersection(values[2:]):
            return Reason.IMAGE_TYPE_SECONDARY
    maker, model = _upper(ds, "Manufacturer"), _upper(ds, "ManufacturerModelName")
    rows, cols = image_int(ds, "Rows"), image_int(ds, "Columns")
    if any(d.matches(maker, model, modality, rows, cols) for d in burn_in_devices()):
        return Reason.DEVICE_BURNS_IN_TEXT
    return None
