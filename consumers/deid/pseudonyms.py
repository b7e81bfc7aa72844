"""Keyed, deterministic pseudonyms: UIDs, patient pseudonyms and per-patient date shifts.

Everything is an HMAC-SHA256 under the regional secret with a domain-separating prefix, so
the same input gives the same output on any box, any night, and nothing can be reversed or
brute-forced without the key (a 10-digit NHS number would fall in seconds to a plain hash).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date, timedelta

from .config import PseudonymKey

_UID_CACHE_MAX = 65536
_NON_DIGIT = re.compile(r"[\s-]")
_LEADING_DIGITS = re.compile(r"[0-9]*")


def nhs_number_valid(value: str | None) -> str | None:
    """The 10 NHS-number digits if `value` is a valid NHS number (modulus 11), else None."""
    if not value:
        return None
    digits = _NON_DIGIT.sub("", value)
    if len(digits) != 10 or not digits.isascii() or not digits.isdigit():
        return None
    total = sum(int(d) * w for d, w in zip(digits[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        check = 0
    if check == 10 or check != int(digits[9]):
        return None
    return digits


@dataclass(frozen=True, repr=False)
class Linkage:
    """What the identity index keeps of one de-identified instance, so that a key rotation can
    map this patient's and this study's pseudonyms to the new key's: the HMAC messages
    (``patient`` holds the NHS number or local ID, ``study_uid`` the original UID), the
    pseudonyms and the date shift. Identifying: encrypted before it is stored
    (``consumers.identity_index``), never logged (``repr`` shows nothing)."""

    patient: str
    patient_pseudonym: str
    date_shift_days: int
    study_uid: str | None = None
    study_pseudonym: str | None = None

    def __repr__(self) -> str:
        return "Linkage(<identifying: for the identity index only>)"


class Pseudonymiser:
    """HMAC-derived identifiers under one key; cheap to call repeatedly (UIDs cached)."""

    def __init__(self, key: PseudonymKey, trust_code: str, max_date_shift_days: int) -> None:
        self._secret = key.secret
        self._trust = trust_code
        self._max_shift = max_date_shift_days
        self._uids: dict[str, str] = {}

    def _mac(self, message: bytes) -> bytes:
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """``2.25.`` + the first 128 bits of HMAC(secret, "uid:" + original) as an integer."""
        cached = self._uids.get(original)
        if cached is None:
            digest = self._mac(b"uid:" + original.encode("ascii", "replace"))
            cached = "2.25." + str(int.from_bytes(digest[:16], "big"))
            if len(self._uids) >= _UID_CACHE_MAX:
                self._uids.clear()
            self._uids[original] = cached
        return cached

    def patient_message(self, nhs_number: str | None, local_id: str | None) -> tuple[str, bool]:
        """``(message, nhs_number_valid)``: what the patient pseudonym is the HMAC of."""
        digits = nhs_number_valid(nhs_number)
        if digits is not None:
            return "patient:nhs:" + digits, True
        return f"patient:local:{self._trust}:{(local_id or '').strip()}", False

    def patient(self, nhs_number: str | None, local_id: str | None) -> tuple[str, bool]:
        """``(pseudonym, nhs_number_valid)``; region-wide from a valid NHS number, else
        scoped to the trust's local patient ID (so two trusts' local IDs never collide)."""
        message, valid = self.patient_message(nhs_number, local_id)
        return self.patient_of(message), valid

    def patient_of(self, message: str) -> str:
        """The pseudonym of a patient message (``patient_message``): 32 upper-case hex."""
        return self._mac(message.encode()).hex()[:32].upper()

    def date_shift_days(self, patient_pseudonym: str) -> int:
        """Whole days in [-max, -1] U [1, max], fixed per patient (never 0)."""
        digest = self._mac(b"dateshift:" + patient_pseudonym.encode("ascii"))
        k = int.from_bytes(digest[:8], "big") % (2 * self._max_shift)
        return k - self._max_shift if k < self._max_shift else k - self._max_shift + 1


def shift_da(value: str, days: int) -> str:
    """Shift one DA value (YYYYMMDD, or legacy YYYY.MM.DD); '' when unparseable."""
    text = value.strip()
    if len(text) == 10 and text[4] in ".-/" and text[7] == text[4]:
        text = text[:4] + text[5:7] + text[8:]
    if len(text) != 8 or not text.isdigit():
        return ""
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        return (day + timedelta(days=days)).strftime("%Y%m%d")
    except (ValueError, OverflowError):
        return ""


def shift_dt(value: str, days: int) -> str:
    """Shift the date part of one DT value, keeping time, fraction and UTC offset.

    A DT with only a year or year+month is shifted from its first day and truncated back to
    the same precision. '' when unparseable.
    """
    text = value.strip()
    digits = len(_LEADING_DIGITS.match(text).group())  # type: ignore[union-attr]
    if digits >= 8:
        head, rest, digits = text[:8], text[8:], 8
    elif digits in (4, 6):
        head = text[:digits] + ("0101" if digits == 4 else "01")
        rest = text[digits:]
    else:
        return ""
    shifted = shift_da(head, days)
    if not shifted:
        return ""
    return shifted[:digits] + rest


def shift_date_value(vr: str, value: str, days: int) -> str:
    """Shift a possibly multi-valued DA/DT string (backslash separated; DA ranges kept)."""
    shift = shift_da if vr == "DA" else shift_dt
    out = []
    for part in value.split("\\"):
        if vr == "DA" and "-" in part.strip() and len(part.strip()) != 10:
            out.append("-".join(shift(p, days) if p else "" for p in part.split("-")))
        elif part.strip():
            out.append(shift(part, days))
        else:
            out.append("")
    return "\\".join(out)
