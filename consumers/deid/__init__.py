"""De-identification of DICOM instances per PS3.15 Annex E, with keyed pseudonyms, a pixel
gate and an independent verification gate. See ``docs/deidentification.md``.

Public API (what the anonymiser consumer and ``smartbox deidentify`` call)::

    key = PseudonymKey.from_env()                 # DeidConfigError without a key
    deid = Deidentifier(key, DeidPolicy(trust_code="RTK"))
    result = deid.process(raw_bytes)              # DeidResult; never raises for bad input
"""

from .config import (
    DEFAULT_OPTIONS,
    OPTION_COLUMNS,
    DeidConfigError,
    DeidPolicy,
    MaskRect,
    MaskRule,
    PseudonymKey,
    mask_rules_from_toml,
)
from .deidentifier import Deidentifier, DeidResult
from .pseudonyms import nhs_number_valid
from .table import CODE_VERSION, TABLE_EDITION

__all__ = [
    "CODE_VERSION",
    "DEFAULT_OPTIONS",
    "OPTION_COLUMNS",
    "TABLE_EDITION",
    "DeidConfigError",
    "DeidPolicy",
    "DeidResult",
    "Deidentifier",
    "MaskRect",
    "MaskRule",
    "PseudonymKey",
    "mask_rules_from_toml",
    "nhs_number_valid",
]
