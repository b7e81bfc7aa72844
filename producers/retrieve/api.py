"""Submit a cohort from rows already validated (a cohort file, or a clinical submission's
patients with their windows): the one entry point that writes a cohort.

``submit(settings, trust, rows, source)`` stores the rows (and their patient pseudonyms, the
same keyed HMAC as the images' PatientID, for reports) in the trust's cohort database and
returns the cohort id; ``smartbox cohort run --trust CODE`` then works through it.
"""

from __future__ import annotations

from collections.abc import Sequence

from consumers.deid.pseudonyms import Pseudonymiser
from smartbox.keys import RegionalKey
from smartbox.settings import Settings
from smartbox.trusts import TrustConfig

from .config import require
from .rows import CohortRow, row_pseudonym
from .state import CohortState, state_path


def pseudonymiser(trust: TrustConfig, key: RegionalKey) -> Pseudonymiser:
    """The images' pseudonymiser for this trust (patient pseudonyms and UIDs; no dates here)."""
    return Pseudonymiser(key, trust.code, 1)


def open_state(settings: Settings, trust: TrustConfig) -> CohortState:
    return CohortState(state_path(settings.state_dir, trust.code))


def submit(
    settings: Settings,
    trust: TrustConfig,
    rows: Sequence[CohortRow],
    source: str,
    *,
    rejected: int = 0,
    key: RegionalKey | None = None,
) -> str:
    """Store a cohort of validated rows for ``trust``; its id. ConfigError if the trust has
    no valid ``[retrieve]`` table (nothing would ever process it)."""
    require(trust)
    key = key or RegionalKey.from_env()
    names = pseudonymiser(trust, key)
    pseudonyms = [row_pseudonym(names, trust.nhs_number_attribute, r) for r in rows]
    state = open_state(settings, trust)
    try:
        return state.add_cohort(trust.code, source, list(rows), pseudonyms, rejected)
    finally:
        state.close()
