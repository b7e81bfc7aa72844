"""Who an instance says its patient is, as keyed fingerprints: for the study consistency check.

Instances of one study must agree on the patient. A mis-filed instance (another patient's
image sent with the study) or a merged study would otherwise be staged under one pseudonym
and the national side would link two people's images as one. The anonymiser compares these
fingerprints across the instances of a batch (``consumers/identity_check.py``, rule in
``outliers``), and so does ``smartbox deidentify``.

Each of name, patient ID, birth date and NHS number is normalised (folded: ``Müller`` and
``MULLER`` agree; empty trailing name components dropped; NHS number as its 10 digits, when
it is a valid one) and
HMAC-ed with the regional key, so the fingerprints say nothing outside the box and are never
written anywhere. An empty or absent value is unknown, not a disagreement: scanners often
leave the birth date out of some series.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter

from .fold import fold
from .pseudonyms import nhs_number_valid

Fingerprint = tuple[str | None, str | None, str | None, str | None]
FIELDS = ("name", "patient_id", "birth_date", "nhs_number")


def _name(value: str) -> str:
    parts = [" ".join(p.split()) for p in fold(value).replace("=", "^").split("^")]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)


_NAME, _ID, _BIRTH = 0x00100010, 0x00100020, 0x00100030


def fingerprint(secret: bytes, patient: dict[int, str], nhs_tag: int) -> Fingerprint:
    """The keyed fingerprints of (name, patient ID, birth date, NHS number) from the source's
    top-level patient attributes as collected (``Identifiers.patient``: tag -> first value,
    decoded from the raw bytes); None where the instance has no value."""
    nhs_raw = patient.get(nhs_tag, "").strip(" \0")
    values = (
        _name(patient.get(_NAME, "").strip(" \0")),
        patient.get(_ID, "").strip(" \0"),
        patient.get(_BIRTH, "").strip(" \0"),
        # only a valid NHS number is one: anything else there is compared as the patient ID
        nhs_number_valid(nhs_raw) or "",
    )
    out: list[str | None] = []
    for label, value in zip(FIELDS, values, strict=True):
        if not value:
            out.append(None)
            continue
        mac = hmac.new(secret, f"identity:{label}:{value}".encode(), hashlib.sha256)
        out.append(mac.hexdigest()[:32])
    return (out[0], out[1], out[2], out[3])


def disagree(fingerprints: list[Fingerprint | None]) -> bool:
    """Whether two of the fingerprints hold different known values for the same field."""
    return any(outliers(fingerprints))


def outliers(fingerprints: list[Fingerprint | None]) -> list[bool]:
    """For each fingerprint, whether it disagrees with the study on who the patient is.

    Per field, the known values are counted. One value: no disagreement. Several, and one
    held by more than half of the instances that have the field: the instances with another
    value disagree (a mis-filed instance, or a damaged one, among a consistent study: held
    back, the consistent rest goes on). Several and no majority (a merged study, two people
    half and half): every instance with that field disagrees, and the study is held back.
    """
    out = [False] * len(fingerprints)
    for i in range(len(FIELDS)):
        known = [(n, f[i]) for n, f in enumerate(fingerprints) if f is not None and f[i]]
        counts = Counter(value for _n, value in known)
        if len(counts) < 2:
            continue
        top, top_count = counts.most_common(1)[0]
        majority = top if top_count * 2 > len(known) else None
        for n, value in known:
            if value != majority:
                out[n] = True
    return out
