"""Generic patterns of identifying data in free text, whoever's they are: NHS numbers, UK
postcodes, UK phone numbers. Applied to folded text (``fold``: full-width digits and odd
dashes or spaces are plain ASCII by then).

**NHS numbers** are found whatever the grouping: every run of digits in which the digit
groups are separated by at most three of space, hyphen, dot, slash or underscore is read as
one number. A run of exactly 10 digits that passes the modulus-11 check is an NHS number
(``943 476 5919``, ``943-4765-919``, ``943.476.5919``, ``9434765919``). In a longer run, so
that a number cannot hide behind a neighbour (``NHS 943 476 5919 2024``), every window of
whole groups of 2+ digits that adds up to 10 digits is checked too; single-digit groups
(``1.25 0.5``) are not joined, which keeps measurement lists from matching by chance
(1 in 11 of random 10-digit strings pass the check).
"""

from __future__ import annotations

import re
from functools import lru_cache

from .pseudonyms import nhs_number_valid

# the digit first, the look-behind after it: the engine then skips to digits (module doc)
# (and only runs of 10+ digits are returned: shorter ones are never looked at in Python)
_DIGIT_RUN = re.compile(r"[0-9](?<![0-9][0-9])(?:[ \-./_]{0,3}[0-9]){9,}")
_GAPS = re.compile(r"[ \-./_]+")
POSTCODE_PATTERN = re.compile(
    r"(?<![A-Za-z0-9])(?:GIR ?0AA|"
    r"[A-PR-UWYZ][A-HK-Y]?[0-9][0-9A-HJKMNPR-Y]? ?[0-9][ABD-HJLNP-UW-Z]{2})"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)
PHONE_PATTERN = re.compile(r"(?<![0-9+])(?:\+44 ?\(?0?\)? ?|0)[1-9](?:[ -]?[0-9]){8,9}(?![0-9])")


def _run_has_nhs_number(run: str) -> bool:
    groups = _GAPS.split(run)
    digits = "".join(groups)
    if len(digits) < 10:
        return False
    if len(digits) == 10:
        return nhs_number_valid(digits) is not None
    for start in range(len(groups)):
        total = 0
        for end in range(start, len(groups)):
            if len(groups[end]) < 2:
                break
            total += len(groups[end])
            if total >= 10:
                if total == 10 and nhs_number_valid("".join(groups[start : end + 1])):
                    return True
                break
    return False


def has_nhs_number(text: str) -> bool:
    """Whether `text` holds a valid NHS number in any grouping (module docstring)."""
    return any(_run_has_nhs_number(m.group()) for m in _DIGIT_RUN.finditer(text))


@lru_cache(maxsize=4096)  # a series repeats its text: most instances are a cache hit
def pattern_kind(text: str) -> str | None:
    """``nhs_number_pattern`` / ``postcode_pattern`` / ``phone_pattern`` or None."""
    if has_nhs_number(text):
        return "nhs_number_pattern"
    if POSTCODE_PATTERN.search(text):
        return "postcode_pattern"
    if PHONE_PATTERN.search(text):
        return "phone_pattern"
    return None
