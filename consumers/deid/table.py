"""PS3.15 Annex E Table E.1-1 as data, compiled once per policy into ``tag -> action``.

Actions after compilation are single letters:

=====  ==================================================================================
``K``  keep (sequences are still walked; DA/DT still shifted; UIDs still replaced)
``X``  remove
``Z``  replace with a zero-length value (empty sequence for SQ)
``D``  replace with a non-identifying dummy of the same VR (sequences: walk the items)
``U``  replace the UID with ``2.25.<HMAC>`` (consistent within and across instances)
``C``  clean: DA/DT shifted, TM kept, sequences walked, free text kept only when it
       contains none of the instance's identifiers and no NHS/postcode/phone pattern
=====  ==================================================================================

Combined codes are read strictly (the strictest action that keeps the output a valid
instance): remove, unless the attribute is Type 1 or Type 2 in an IOD we expect
(``allowlist.REQUIRED_TYPE``), in which case Z for Type 2 and D for Type 1.

* ``Z/D``    -> D if Type 1 else Z
* ``X/Z``    -> Z if Type 1/2 else X
* ``X/D``    -> D if Type 1/2 else X
* ``X/Z/D``  -> D if Type 1, Z if Type 2, else X
* ``X/Z/U*`` -> K (walk, every UID inside replaced) if Type 1/2 else X
* ``X`` on an attribute listed there -> D / Z likewise

``allowlist.SUPPLEMENTARY_ROWS`` adds rows the table lacks (Text Value).

When an enabled option has a code for a row it replaces the Basic code; if two enabled
options disagree, ``C`` beats ``K``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from .allowlist import REQUIRED_TYPE, SUPPLEMENTARY_ROWS

CODE_VERSION = "0.1.0"
TABLE_EDITION = "PS3.15 2024b+2026c"
SAFE_PRIVATE_EDITION = "PS3.15 2024b E.3.10-1"

ACTIONS = frozenset("KXZDUC")
BASIC_CODES = frozenset({"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})

CURVE_PATTERN = "(50XX,XXXX)"
OVERLAY_DATA_PATTERN = "(60XX,3000)"
OVERLAY_COMMENTS_PATTERN = "(60XX,4000)"
PRIVATE_PATTERN = "(GGGG,EEEE) WHERE GGGG IS ODD"
PATTERNS = (CURVE_PATTERN, OVERLAY_DATA_PATTERN, OVERLAY_COMMENTS_PATTERN, PRIVATE_PATTERN)


def _load(name: str) -> list[dict[str, Any]]:
    text = resources.files(__package__).joinpath("data", name).read_text("utf-8")
    rows: list[dict[str, Any]] = json.loads(text)
    return rows


@cache
def annex_e_rows() -> tuple[dict[str, Any], ...]:
    """The 656 rows of Table E.1-1 (pinned edition, see ``data/README.md``)."""
    return tuple(_load("annex_e_table.json"))


@cache
def safe_private_keys() -> frozenset[tuple[int, str, int]]:
    """``(group, PRIVATE CREATOR upper-cased, element low byte)`` of Table E.3.10-1."""
    return frozenset(
        (int(r["group"], 16), r["private_creator"].strip().upper(), int(r["element_low_byte"], 16))
        for r in _load("safe_private.json")
    )


def parse_tag(text: str) -> int:
    """``"(0008,0020)"`` -> ``0x00080020``."""
    group, elem = text.strip("()").split(",")
    return (int(group, 16) << 16) | int(elem, 16)


def resolve_code(code: str, keyword: str | None) -> str:
    """Reduce a (possibly combined) table code to one action letter (see module doc)."""
    req = REQUIRED_TYPE.get(keyword or "")
    if code == "X" and req:
        return "D" if req == "1" else "Z"
    if code in ACTIONS:
        return code
    if code == "Z/D":
        return "D" if req == "1" else "Z"
    if code == "X/Z":
        return "Z" if req else "X"
    if code == "X/D":
        return "D" if req else "X"
    if code == "X/Z/D":
        return {"1": "D", "2": "Z"}.get(req or "", "X")
    if code == "X/Z/U*":
        return "K" if req else "X"
    raise ValueError(f"unknown Annex E action code {code!r}")


def row_action(row: dict[str, Any], options: Iterable[str]) -> str:
    """The single action for one table row under the enabled options."""
    codes = {row[opt] for opt in options if row.get(opt)}
    if codes:
        code = "C" if "C" in codes else min(codes)
    else:
        code = row["basic"]
    return resolve_code(code, row.get("keyword"))


@dataclass(frozen=True)
class CompiledTable:
    """The table compiled for one set of options."""

    actions: dict[int, str]
    curve: str
    overlay_data: str
    overlay_comments: str
    private: str


@cache
def compile_table(options: frozenset[str]) -> CompiledTable:
    """Compile Table E.1-1 into ``tag -> action`` (plus the four pattern rows)."""
    actions: dict[int, str] = {}
    patterns: dict[str, str] = {}
    for row in annex_e_rows():
        action = row_action(row, options)
        if row["tag"] in PATTERNS:
            patterns[row["tag"]] = action
        else:
            actions[parse_tag(row["tag"])] = action
    for row in SUPPLEMENTARY_ROWS:
        actions.setdefault(parse_tag(row["tag"]), row_action(row, options))
    return CompiledTable(
        actions=actions,
        curve=patterns[CURVE_PATTERN],
        overlay_data=patterns[OVERLAY_DATA_PATTERN],
        overlay_comments=patterns[OVERLAY_COMMENTS_PATTERN],
        private=patterns[PRIVATE_PATTERN],
    )
