"""De-identification of DICOM instances per PS3.15 Annex E, with keyed pseudonyms, a pixel
gate and an independent verification gate. See ``docs/deidentification.md``.

Public API (what the anonymiser consumer and ``smartbox deidentify`` call)::

    key = PseudonymKey.from_env()                 # ConfigError without a key
    policy = PolicyBuilder.from_env().for_trust(trust)   # the one policy builder
    deid = Deidentifier(key, policy)
    result = deid.process(raw_bytes)              # DeidResult; never raises for bad input
    result.reason                                 # None, or a Reason (one closed vocabulary)
"""

from .config import (
    DEFAULT_OPTIONS,
    OPTION_COLUMNS,
    DeidConfigError,
    DeidPolicy,
    InflateLimits,
    MaskRect,
    MaskRule,
    PseudonymKey,
    mask_rules_from_toml,
)
from .deidentifier import Deidentifier, DeidResult
from .policy import PolicyBuilder
from .pseudonyms import nhs_number_valid
from .reasons import Reason
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
    "InflateLimits",
    "MaskRect",
    "MaskRule",
    "PolicyBuilder",
    "PseudonymKey",
    "Reason",
    "mask_rules_from_toml",
    "nhs_number_valid",
]
