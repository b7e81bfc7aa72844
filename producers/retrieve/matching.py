"""Which studies found for a patient are wanted: modality, then body part.

Decided from the STUDY-level answer when it can be (ModalitiesInStudy, StudyDescription), and
from the SERIES level (Modality, BodyPartExamined) only when it cannot: most studies are
decided without a second query to the archive.

* modality: the row's modalities, else the trust's (default CR, DX, CT, MR): a study with
  none of them is ``filtered`` (reason ``modality``);
* body part: with the trust's defaults, a description matching ``description_exclude`` is
  filtered (``description_excluded``; "CT HEAD"), one matching ``description_include`` is
  wanted ("CT CHEST", "CXR"); otherwise a series whose BodyPartExamined is one of
  ``body_parts`` makes it wanted, else it is filtered (``body_part``). A row with its own body
  parts replaces both: its terms are the body parts and the description words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from .config import Filters
from .scu import FoundStudy


@dataclass(frozen=True)
class Rules:
    modalities: frozenset[str]
    body_parts: frozenset[str]
    include: tuple[re.Pattern[str], ...]
    exclude: tuple[re.Pattern[str], ...]


def rules_for(filters: Filters, modalities: Sequence[str], body_parts: Sequence[str]) -> Rules:
    """The rules for one cohort row (its own modalities and body parts, if it gave any)."""
    if body_parts:
        include = tuple(re.compile(re.escape(b), re.IGNORECASE) for b in body_parts)
        wanted = frozenset(modalities or filters.modalities)
        return Rules(wanted, frozenset(body_parts), include, ())
    return Rules(
        frozenset(modalities or filters.modalities),
        frozenset(filters.body_parts),
        tuple(re.compile(p, re.IGNORECASE) for p in filters.description_include),
        tuple(re.compile(p, re.IGNORECASE) for p in filters.description_exclude),
    )


def decide(
    study: FoundStudy, rules: Rules, series: Callable[[], list[Dataset]]
) -> tuple[bool, str | None]:
    """(wanted, reason if not); ``series`` is called (a SERIES-level C-FIND) only if needed."""
    modalities = set(study.modalities)
    if modalities and not modalities & rules.modalities:
        return False, "modality"
    described = study.description
    if described and any(p.search(described) for p in rules.exclude):
        return False, "description_excluded"
    if modalities and described and any(p.search(described) for p in rules.include):
        return True, None
    answers = series()
    wanted_modality = False
    for item in answers:
        modality = str(item.get("Modality", "") or "").strip().upper()
        if modality and modality not in rules.modalities:
            continue
        wanted_modality = wanted_modality or bool(modality)
        part = str(item.get("BodyPartExamined", "") or "").strip().upper()
        if part in rules.body_parts:
            return True, None
    if not modalities and not wanted_modality:
        return False, "modality"
    if described and any(p.search(described) for p in rules.include):
        return True, None
    return False, "body_part"
