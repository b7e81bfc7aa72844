"""The other spellings of one source value that a person may type into free text.

* **names**: every part of every component of a PN value, and the parts joined (``O'SULLIVAN-
  PRICE`` -> ``OSULLIVAN``, ``SULLIVANPRICE``, ``OSULLIVANPRICE``: a one-letter part is not a
  token on its own, but it is part of the joined forms), ``Mc``/``Mac`` swapped;
* **digit strings** (the patient's NHS number, phone numbers): a regular expression that allows
  any of space, hyphen, dot, slash, underscore or brackets between any two digits, so the
  grouping (3-3-4, 3-4-3, none) does not matter;
* **birth dates**: the numeric spellings as literals (for the raw byte and pixel scans), and a
  regular expression for free text that finds the date written any common way: day-first,
  month-first or year-first, padded or not, 2- or 4-digit year, any separator or none, the
  month as a number or an English name or abbreviation, ordinals (``2 March 1957``, ``March 2,
  1957``, ``2nd of Mar. 1957``, ``02/03/57``, ``1957-03-02``, ``02.03.1957``, ``02MAR1957``).

Everything here is per patient and cached by its callers: nothing is rebuilt per instance.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache

#: what separates the parts of one PN component (given names, a double-barrelled surname)
PART_SPLIT = re.compile(r"[\s,.;:/()\"'\-\u2010-\u2015\u2018\u2019\u02bc`\u00b4]+")
_COMPONENTS = re.compile(r"[\^=]")
_MAX_JOINED = 4  # parts joined into one variant at most (bounded: 4 parts -> 6 variants)

#: between two digits of a number someone typed: nothing, or a few separator characters
DIGIT_GAP = r"[ \-./_()+]{0,3}"

MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)


def name_parts(name: str) -> list[list[str]]:
    """The parts of each component of a PN value (``^`` and ``=`` separate components)."""
    return [[p for p in PART_SPLIT.split(c) if p] for c in _COMPONENTS.split(name)]


@lru_cache(maxsize=4096)
def name_variants(name: str) -> tuple[frozenset[str], frozenset[str]]:
    """(tokens, joined) spellings of a PN value: every part on its own, and consecutive parts
    written together (plus ``Mc``/``Mac`` swapped). Callers drop what is too short."""
    tokens: set[str] = set()
    joined: set[str] = set()
    for parts in name_parts(name):
        tokens.update(parts)
        for i in range(len(parts)):
            for j in range(i + 2, min(len(parts), i + _MAX_JOINED) + 1):
                joined.add("".join(parts[i:j]))
    for word in list(tokens) + list(joined):
        low = word.lower()
        if low.startswith("mac") and len(word) > 5:
            joined.add("Mc" + word[3:])
        elif low.startswith("mc") and len(word) > 4:
            joined.add("Mac" + word[2:])
    return frozenset(tokens), frozenset(joined)


def digits_pattern(digits: str) -> str:
    """A pattern for `digits` with any grouping and separators, not inside a longer number.

    It starts with the first digit and only then looks behind it (``(?<![0-9]d)``: the
    character before is not a digit), so the regex engine can skip to that digit instead of
    trying the look-behind at every position (~10x faster on a dataset's bytes)."""
    first = digits[0]
    return first + rf"(?<![0-9]{first})" + DIGIT_GAP + DIGIT_GAP.join(digits[1:]) + r"(?![0-9])"


def parse_da(da: str) -> date | None:
    """The date of a DA value (``YYYYMMDD``), or None if it is not one."""
    da = da.strip()
    if len(da) != 8 or not da.isascii() or not da.isdigit():
        return None
    try:
        return date(int(da[:4]), int(da[4:6]), int(da[6:]))
    except ValueError:
        return None


@lru_cache(maxsize=1024)
def birth_date_spellings(da: str) -> tuple[str, ...]:
    """A DA value in the spellings people type most (ISO, UK day-first, dotted, DICOM-style
    ``23AUG1961``, in words): literals for the raw byte and pixel scans. Free text is
    searched with ``date_pattern``, which finds every spelling."""
    da = da.strip()
    when = parse_da(da)
    if when is None:
        return (da,) if da else ()
    y, m, d = da[:4], da[4:6], da[6:]
    mon = MONTHS[when.month - 1]
    return (
        da,
        f"{y}-{m}-{d}",
        f"{y}/{m}/{d}",
        f"{y}.{m}.{d}",
        f"{d}/{m}/{y}",
        f"{d}-{m}-{y}",
        f"{d}.{m}.{y}",
        f"{d}{m}{y}",
        f"{d}{mon[:3]}{y}",
        f"{when.day} {mon} {y}",
    )


def _number(n: int, padded_only: bool) -> str:
    return f"{n:02d}" if padded_only or n >= 10 else f"0?{n}"


def _month_name(month: int) -> str:
    full = MONTHS[month - 1]
    if full == "may":
        return "may"
    if full == "september":
        return r"sep(?:t|tember)?\.?"
    return rf"{full[:3]}(?:{full[3:]})?\.?"


@lru_cache(maxsize=1024)
def date_pattern(da: str) -> str | None:
    """A regular expression (for folded, lower-case text) matching the date of `da` written
    in any common way; None if `da` is not a date."""
    when = parse_da(da)
    if when is None:
        return None
    d, m, y = when.day, when.month, when.year
    day, mon = _number(d, False), _number(m, False)
    dd, mm = _number(d, True), _number(m, True)
    year, yyyy, yy = rf"(?:{y}|{y % 100:02d})", str(y), f"{y % 100:02d}"
    name = rf"(?:{_month_name(m)})(?![a-z])"
    ordinal = r"(?:st|nd|rd|th)?"
    sep = r"(?:\s*[./\-,]\s*|\s+)"  # numeric forms: a separator is required ...
    opt = r"(?:\s*[./\-,]?\s*)(?:of\s+)?"  # ... named forms: optional ("02MAR1957")
    forms = [
        rf"{day}{sep}{mon}{sep}{year}",
        rf"{mon}{sep}{day}{sep}{year}",
        rf"{yyyy}{sep}{mon}{sep}{day}",
        rf"{dd}{mm}(?:{yyyy}|{yy})",  # ... except the padded compact ones
        rf"{mm}{dd}(?:{yyyy}|{yy})",
        rf"{yyyy}{mm}{dd}",
        rf"{day}{ordinal}{opt}{name}{opt}{year}",
        rf"{name}{opt}{day}{ordinal}{opt}{year}",
        rf"{yyyy}{opt}{name}{opt}{day}{ordinal}",
    ]
    return r"(?<![0-9a-z])(?:" + "|".join(forms) + r")(?![0-9])"
