"""Configuration value objects of the de-identifier: the option columns, the policy, mask rules.

This package owns its options: the ten Annex E option columns and the default profile are
defined here, and a trust's policy is built from its trust file by ``policy.PolicyBuilder``
only (the anonymiser, ``smartbox deidentify``, ``smartbox withdraw`` and ``check-config``
all ask it). The key is the one regional key of ``smartbox.keys`` (``PseudonymKey`` is that
class): one loader, one rule for whitespace and length. It never has a default: a missing key
is a configuration error that stops every de-identifying command before it touches a file.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smartbox.errors import ConfigError
from smartbox.inflate import InflateLimits
from smartbox.keys import (
    KEY_ENV,
    KEY_FILE_ENV,
    KEY_VERSION_ENV,
    MIN_KEY_BYTES,
    RegionalKey,
)

#: The ten option columns of PS3.15 Table E.1-1 (as named in the Annex E table data)
OPTION_COLUMNS: tuple[str, ...] = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_longitudinal_full_dates",
    "retain_longitudinal_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
)
#: Basic Profile + Retain Longitudinal Temporal Information with Modified Dates
#: + Retain Patient Characteristics
DEFAULT_OPTIONS: frozenset[str] = frozenset(
    {"retain_longitudinal_modified_dates", "retain_patient_characteristics"}
)
#: The regional HMAC secret and its version label (recorded with every output)
PseudonymKey = RegionalKey

__all__ = [
    "DEFAULT_OPTIONS",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "KEY_VERSION_ENV",
    "MIN_KEY_BYTES",
    "OPTION_COLUMNS",
    "DeidConfigError",
    "DeidPolicy",
    "InflateLimits",
    "MaskRect",
    "MaskRule",
    "PseudonymKey",
    "mask_rules_from_toml",
    "tesseract_path",
]


class DeidConfigError(ConfigError):
    """The de-identifier cannot run safely with this configuration (a bad trust-file field,
    OCR without tesseract): a ``ConfigError``, so every process stops at start on it."""


@dataclass(frozen=True)
class MaskRect:
    """A rectangle of pixels: `x`, `y` of its top-left pixel (column, row, from 0) and its
    size, as in CTP's DicomPixelAnonymizer scripts ``(x,y,w,h)``."""

    x: int
    y: int
    width: int
    height: int


_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,39}")


@dataclass(frozen=True)
class MaskRule:
    """Rectangles to blank for a device known to burn text in a fixed place.

    A rule matches an instance when Manufacturer and ManufacturerModelName equal `manufacturer`
    and `model` (case-insensitive, surrounding spaces ignored), Rows and Columns equal `rows`
    and `columns`, and, when given, Modality equals `modality` and SOP Class UID equals
    `sop_class_uid`. Exact matching on purpose: a rule that matched the wrong device would
    release text it did not cover. Rectangles must lie inside the image.
    """

    manufacturer: str
    model: str
    rows: int
    columns: int
    rectangles: tuple[MaskRect, ...]
    modality: str | None = None
    sop_class_uid: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        for fname in ("manufacturer", "model"):
            value = getattr(self, fname)
            if not isinstance(value, str) or not value.strip():
                raise DeidConfigError(f"mask rule {fname}: a non-empty string is required")
        for fname in ("rows", "columns"):
            value = getattr(self, fname)
            if not _is_int(value) or not 1 <= value <= 65535:
                raise DeidConfigError(f"mask rule {fname}: an integer 1-65535 is required")
        if not self.rectangles:
            raise DeidConfigError("mask rule rectangles: at least one rectangle is required")
        for i, rect in enumerate(self.rectangles):
            where = f"mask rule rectangles[{i}]"
            if not isinstance(rect, MaskRect):
                raise DeidConfigError(f"{where}: not a MaskRect")
            for fname in ("x", "y", "width", "height"):
                value = getattr(rect, fname)
                low = 1 if fname in ("width", "height") else 0
                if not _is_int(value) or value < low:
                    raise DeidConfigError(f"{where}.{fname}: an integer >= {low} is required")
            if rect.x + rect.width > self.columns or rect.y + rect.height > self.rows:
                raise DeidConfigError(
                    f"{where}: ({rect.x},{rect.y},{rect.width},{rect.height}) extends beyond "
                    f"the {self.columns}x{self.rows} image"
                )
        if self.name and not _RULE_NAME.fullmatch(self.name):
            raise DeidConfigError(
                "mask rule name: 1-40 letters, digits, spaces, '.', '_' or '-' required"
            )

    def matches(
        self,
        manufacturer: str,
        model: str,
        rows: object,
        columns: object,
        modality: str,
        sop_class_uid: str,
    ) -> bool:
        """Whether an instance with these attributes is this rule's device and image."""
        return (
            manufacturer.strip().upper() == self.manufacturer.strip().upper()
            and model.strip().upper() == self.model.strip().upper()
            and rows == self.rows
            and columns == self.columns
            and (self.modality is None or modality.strip().upper() == self.modality.upper())
            and (self.sop_class_uid is None or sop_class_uid.strip() == self.sop_class_uid)
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_RULE_KEYS = frozenset(
    {"name", "manufacturer", "model", "rows", "columns", "modality", "sop_class_uid", "rectangles"}
)
_RECT_KEYS = ("x", "y", "width", "height")


def mask_rules_from_toml(
    tables: Sequence[Mapping[str, Any]], where: str = "deidentification.mask_rules"
) -> tuple[MaskRule, ...]:
    """Mask rules from the ``[[deidentification.mask_rules]]`` tables of a trust file.

    Each table: ``manufacturer``, ``model``, ``rows``, ``columns``, ``rectangles`` (a list
    of ``{x, y, width, height}`` tables or ``[x, y, width, height]`` arrays), optional
    ``modality``, ``sop_class_uid`` and ``name``. Errors raise ``DeidConfigError`` naming
    the field, e.g. ``deidentification.mask_rules[1].rectangles[0].width: ...``.
    """
    if not isinstance(tables, Sequence) or isinstance(tables, str | bytes):
        raise DeidConfigError(f"{where}: a list of tables is required")
    rules = []
    for i, table in enumerate(tables):
        here = f"{where}[{i}]"
        if not isinstance(table, Mapping):
            raise DeidConfigError(f"{here}: a table is required")
        unknown = sorted(set(table) - _RULE_KEYS)
        if unknown:
            raise DeidConfigError(f"{here}.{unknown[0]}: unknown key")
        for key in ("manufacturer", "model", "rows", "columns", "rectangles"):
            if key not in table:
                raise DeidConfigError(f"{here}.{key}: required")
        for key in ("manufacturer", "model", "modality", "sop_class_uid", "name"):
            if key in table and not isinstance(table[key], str):
                raise DeidConfigError(f"{here}.{key}: a string is required")
        for key in ("rows", "columns"):
            if not _is_int(table[key]) or not 1 <= table[key] <= 65535:
                raise DeidConfigError(f"{here}.{key}: an integer 1-65535 is required")
        rects = table["rectangles"]
        if not isinstance(rects, Sequence) or isinstance(rects, str | bytes) or not rects:
            raise DeidConfigError(f"{here}.rectangles: a non-empty list is required")
        parsed = [_rect_from_toml(r, f"{here}.rectangles[{j}]") for j, r in enumerate(rects)]
        try:
            rules.append(
                MaskRule(
                    manufacturer=table["manufacturer"],
                    model=table["model"],
                    rows=table["rows"],
                    columns=table["columns"],
                    rectangles=tuple(parsed),
                    modality=table.get("modality") or None,
                    sop_class_uid=table.get("sop_class_uid") or None,
                    name=table.get("name", ""),
                )
            )
        except DeidConfigError as exc:
            raise DeidConfigError(f"{here}: {exc}") from None
    return tuple(rules)


def _rect_from_toml(value: object, here: str) -> MaskRect:
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(_RECT_KEYS))
        if unknown:
            raise DeidConfigError(f"{here}.{unknown[0]}: unknown key")
        missing = [k for k in _RECT_KEYS if k not in value]
        if missing:
            raise DeidConfigError(f"{here}.{missing[0]}: required")
        numbers = [value[k] for k in _RECT_KEYS]
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes) and len(value) == 4:
        numbers = list(value)
    else:
        raise DeidConfigError(f"{here}: {{x, y, width, height}} or [x, y, width, height]")
    for key, number in zip(_RECT_KEYS, numbers, strict=True):
        low = 1 if key in ("width", "height") else 0
        if not _is_int(number) or number < low:
            raise DeidConfigError(f"{here}.{key}: an integer >= {low} is required")
    return MaskRect(*numbers)


#: what a vocabulary person name in retained free text does (``DeidPolicy.unknown_names``)
UNKNOWN_NAMES = ("clean", "hold", "off")


@dataclass(frozen=True)
class DeidPolicy:
    """Which Annex E options apply, where this trust keeps the NHS number, which pixel
    regions to mask, and whether to run the optional OCR verifier.

    OCR (``ocr=True``) needs ``tesseract`` on PATH (checked when the ``Deidentifier`` is
    built). ``ocr_scope``: ``"masked"`` (instances released after masking) or ``"all"``
    (every instance released with native pixel data). ``ocr_match``: ``"identifiers"`` (a
    word of 3+ characters equal to one of the source instance's identifiers holds it back)
    or ``"any_text"`` (any word of 3+ letters does). ``ocr_max_frames``: frames read per
    instance, evenly spaced (burned-in text is normally on every frame).

    ``unknown_names``: what a person name of the name vocabulary in retained free text does
    (``names``: a name the source never named, e.g. a GP's): ``"clean"`` (the value is
    replaced by ``REMOVED``, the instance released), ``"hold"`` (the instance is held back,
    ``verification_failed:name_vocabulary``) or ``"off"``. ``allow_list``: keep only the
    attributes the instance's IOD lists (``allowlist_iods``), after the table walk.
    """

    trust_code: str
    nhs_number_attribute: str = "PatientID"
    options: frozenset[str] = DEFAULT_OPTIONS
    max_date_shift_days: int = 365
    mask_rules: tuple[MaskRule, ...] = ()
    ocr: bool = False
    ocr_scope: str = "masked"
    ocr_match: str = "identifiers"
    ocr_max_frames: int = 3
    inflate: InflateLimits = InflateLimits()
    unknown_names: str = "clean"
    allow_list: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.options) - set(OPTION_COLUMNS)
        if unknown:
            raise DeidConfigError(f"unknown de-identification options: {sorted(unknown)}")
        if not self.trust_code:
            raise DeidConfigError("trust_code is required")
        if not 1 <= self.max_date_shift_days <= 36500:
            raise DeidConfigError("max_date_shift_days must be between 1 and 36500")
        if not isinstance(self.options, frozenset):
            object.__setattr__(self, "options", frozenset(self.options))
        if not isinstance(self.mask_rules, tuple) or not all(
            isinstance(r, MaskRule) for r in self.mask_rules
        ):
            raise DeidConfigError("mask_rules must be a tuple of MaskRule")
        if self.ocr_scope not in ("masked", "all"):
            raise DeidConfigError("ocr_scope must be 'masked' or 'all'")
        if self.ocr_match not in ("identifiers", "any_text"):
            raise DeidConfigError("ocr_match must be 'identifiers' or 'any_text'")
        if not 1 <= self.ocr_max_frames <= 1000:
            raise DeidConfigError("ocr_max_frames must be between 1 and 1000")
        if self.unknown_names not in UNKNOWN_NAMES:
            raise DeidConfigError("unknown_names must be 'clean', 'hold' or 'off'")


def tesseract_path() -> str | None:
    """The ``tesseract`` executable on PATH, if installed (Debian: tesseract-ocr)."""
    return shutil.which("tesseract")
