"""One patient's compiled scanners: the literals and patterns ``Identifiers`` searches with.

Built once per patient (``compiled_scanners`` is cached by the patient's values), so the
instances of a study share them; ``search`` is cached by (scanners, text) as well, because
the instances of a series repeat the same text values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pydicom.charset import encode_string

from .fold import fold, transliterations
from .spellings import date_pattern, digits_pattern

#: prefixes of the keys of ``Identifiers.values`` that are not literals but digit strings or
#: dates, searched with a per-patient regular expression (any grouping, any spelling)
_PHONE, _NHS, _DOB = "phone:", "nhs:", "dob:"
_PATTERN_KEYS = (_PHONE, _NHS, _DOB)


def _encodings_of(value: str, encodings: tuple[str, ...]) -> set[bytes]:
    """`value` as it may appear in the file: UTF-8, Latin-1, the instance's charsets."""
    out = set()
    for variant in (value, value.upper()):
        out.add(variant.encode("utf-8"))
        try:
            out.add(variant.encode("latin-1"))
        except UnicodeEncodeError:
            pass
        try:
            out.add(encode_string(variant, list(encodings)))
        except (UnicodeError, LookupError, ValueError):
            pass
    return out


@dataclass(frozen=True, eq=False)  # hashed by identity: one object per patient (cached)
class Scanners:
    """One patient's compiled scanners (``_compiled_scanners``)."""

    #: (folded literal, kind, boundary left, boundary right), longest first
    text_literals: tuple[tuple[str, str, bool, bool], ...]
    #: (hint, pattern, kind or "" to look the match up): digit strings and the birth date
    text_patterns: tuple[tuple[str, re.Pattern[str], str], ...]
    #: the phone and NHS numbers in raw bytes, any grouping
    digits_bytes: re.Pattern[bytes] | None
    byte_literals: tuple[tuple[bytes, tuple[str, bool, bool]], ...]


@lru_cache(maxsize=4096)
def search(scanners: Scanners, low: str, min_len: int) -> tuple[str, str] | None:
    """(kind, or "" with the matched digits to look up) of the first identifier in `low`.

    Cached: the instances of a series repeat the same text (device, kernel, codes) and the
    same patient's scanners, so most instances are answered without a search."""
    size = len(low)
    for literal, kind, left, right in scanners.text_literals:
        if len(literal) < min_len:
            continue
        start = low.find(literal)
        while start != -1:
            end = start + len(literal)
            if (not left or start == 0 or not low[start - 1].isalnum()) and (
                not right or end == size or not low[end].isalnum()
            ):
                return kind, ""
            start = low.find(literal, start + 1)
    for hint, pattern, kind in scanners.text_patterns:
        if hint in low:  # every spelling of the value contains its hint: skip the regex
            m = pattern.search(low)
            if m:
                return kind, m.group()
    return None


@lru_cache(maxsize=256)
def compiled_scanners(
    key: tuple[tuple[tuple[str, str], ...], tuple[str, ...]],
) -> Scanners:
    """Scanners for one patient's identifiers; cached because a study repeats them."""
    values, encodings = key
    text_literals: dict[str, tuple[str, bool, bool]] = {}
    digit_parts: list[str] = []
    patterns: list[tuple[str, re.Pattern[str], str]] = []
    literals: dict[bytes, tuple[str, bool, bool]] = {}
    # spellings a pattern finds in text anyway are literals for the byte scans only
    nhs_digits = {v[len(_NHS) :] for v, _k in values if v.startswith(_NHS)}
    has_dob = any(v.startswith(_DOB) for v, _k in values)
    for value, kind in sorted(values, key=lambda vk: len(vk[0]), reverse=True):
        bytes_only = (kind == "birth_date" and has_dob) or (
            kind == "nhs_number" and re.sub(r"[^0-9]", "", value) in nhs_digits
        )
        if value.startswith(_PATTERN_KEYS):
            prefix, _, rest = value.partition(":")
            if prefix + ":" == _DOB:
                pattern = date_pattern(rest)
                if pattern is not None:  # every spelling has the 2-digit year
                    patterns.append((rest[2:4], re.compile(pattern), kind))
            else:
                digit_parts.append(digits_pattern(rest))
            continue
        spellings = {value} | transliterations(value)
        for spelling in sorted(spellings | {fold(s) for s in spellings}):
            folded = fold(spelling)
            left = folded[:1].isascii() and folded[:1].isalnum()
            right = folded[-1:].isascii() and folded[-1:].isalnum()
            if not bytes_only:
                text_literals.setdefault(folded, (kind, left, right))
            if len(value) >= 3:
                for encoded in _encodings_of(spelling, encodings):
                    literals.setdefault(encoded.lower(), (kind, left, right))
    digits_bytes = None
    if digit_parts:
        joined = "|".join(digit_parts)
        patterns.append(("", re.compile(joined), ""))
        digits_bytes = re.compile(joined.encode())
    ordered = sorted(text_literals.items(), key=lambda lk: len(lk[0]), reverse=True)
    return Scanners(
        tuple((lit, kind, left, right) for lit, (kind, left, right) in ordered),
        tuple(patterns),
        digits_bytes,
        tuple(literals.items()),
    )
