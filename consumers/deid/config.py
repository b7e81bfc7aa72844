"""Configuration value objects of the de-identifier: the pseudonym key and the policy.

The key never has a default: a missing key is a configuration error that stops every
de-identifying command before it touches a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: The ten option columns of PS3.15 Table E.1-1, as named in ``data/annex_e_table.json``.
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
#: + Retain Patient Characteristics (issue 4).
DEFAULT_OPTIONS: frozenset[str] = frozenset(
    {"retain_longitudinal_modified_dates", "retain_patient_characteristics"}
)

KEY_ENV = "SMARTBOX_PSEUDONYM_KEY"
KEY_FILE_ENV = "SMARTBOX_PSEUDONYM_KEY_FILE"
KEY_VERSION_ENV = "SMARTBOX_PSEUDONYM_KEY_VERSION"


class DeidConfigError(Exception):
    """The de-identifier cannot run safely with this configuration (e.g. no key)."""


@dataclass(frozen=True)
class PseudonymKey:
    """The regional HMAC secret and its version label (recorded with every output)."""

    secret: bytes = field(repr=False)
    version: str = "k1"

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or not self.secret:
            raise DeidConfigError("pseudonym key secret must be non-empty bytes")
        if not self.version or len(self.version) > 16 or not self.version.isprintable():
            raise DeidConfigError("pseudonym key version must be 1-16 printable characters")

    def __repr__(self) -> str:
        return f"PseudonymKey(version={self.version!r}, secret=<{len(self.secret)} bytes>)"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> PseudonymKey:
        """Read the key from ``SMARTBOX_PSEUDONYM_KEY`` or the file named by
        ``SMARTBOX_PSEUDONYM_KEY_FILE``; the version from ``SMARTBOX_PSEUDONYM_KEY_VERSION``."""
        version = environ.get(KEY_VERSION_ENV, "").strip() or "k1"
        value = environ.get(KEY_ENV, "")
        path = environ.get(KEY_FILE_ENV, "")
        if value and path:
            raise DeidConfigError(f"set only one of {KEY_ENV} and {KEY_FILE_ENV}, not both")
        if path:
            try:
                raw = Path(path).read_bytes()
            except OSError as exc:
                raise DeidConfigError(
                    f"cannot read the pseudonym key file named by {KEY_FILE_ENV}: "
                    f"{exc.strerror or exc}"
                ) from exc
            secret = raw.strip()
        else:
            secret = value.strip().encode("utf-8")
        if not secret:
            raise DeidConfigError(
                f"no pseudonym key: set {KEY_ENV} (or {KEY_FILE_ENV} to a file holding it). "
                "There is deliberately no default key; de-identification refuses to run."
            )
        return cls(secret=secret, version=version)


@dataclass(frozen=True)
class MaskRule:
    """A rectangle of pixels to blank for a device known to burn text in a fixed place.

    Matching is by device signature (Manufacturer and ManufacturerModelName, case-insensitive
    exact match) and image size. Not applied yet: see ``pixel_gate``.
    """

    manufacturer: str
    model: str
    rows: int
    columns: int
    top: int
    left: int
    bottom: int
    right: int


@dataclass(frozen=True)
class DeidPolicy:
    """Which Annex E options apply, and where this trust keeps the NHS number."""

    trust_code: str
    nhs_number_attribute: str = "PatientID"
    options: frozenset[str] = DEFAULT_OPTIONS
    max_date_shift_days: int = 365
    mask_rules: tuple[MaskRule, ...] = ()

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
