"""A valid row pseudonymised into a ``clinical.record`` v1: what the anonymiser would do.

The patient pseudonym and the date shift come from ``consumers.deid.pseudonyms.Pseudonymiser``
built exactly as the anonymiser builds it for the trust (``PolicyBuilder.for_trust``: the
trust code, and the region-wide ``SMARTBOX_DEID_MAX_DATE_SHIFT_DAYS``), and from the same
inputs: the NHS number when it is a valid one (the region-wide pseudonym the images get from
the trust's NHS-number attribute), else the trust-scoped local patient ID (the images'
PatientID). So the record's ``patient`` is the staged images' PatientID, and every date is
moved by the same days as the images' dates: intervals between a swab and a scan survive.

What is kept is an allow-list: coded fields, shifted dates, an age. Names, addresses,
postcodes, the NHS number, local IDs, the record key, the date of birth and free text are
dropped (the date of birth only gives the age at the index date, capped at 90).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from consumers.deid.config import DeidPolicy
from consumers.deid.pseudonyms import Pseudonymiser
from smartbox.keys import RegionalKey

from .fields import AGE_CAP
from .validate import ValidRow


@dataclass(frozen=True)
class Pseudonymised:
    """A record and the row it came from (the number only)."""

    row: int
    record: dict[str, Any]


class ClinicalPseudonymiser:
    """Turns valid rows of one trust into clinical records under the regional key."""

    def __init__(self, key: RegionalKey, policy: DeidPolicy) -> None:
        self.key = key
        self.trust = policy.trust_code
        self._id_is_nhs = policy.nhs_number_attribute == "PatientID"
        # the anonymiser's own construction (consumers.deid.deidentifier.Deidentifier)
        self._pseudo = Pseudonymiser(key, policy.trust_code, policy.max_date_shift_days)

    def patient(self, nhs_number: str | None, local_id: str | None) -> str:
        """The patient pseudonym the images of this patient get at this trust."""
        return self._pseudo.patient(nhs_number, local_id)[0]

    def record_id(self, patient: str, record_key: str | None) -> str:
        """Deterministic: trust, pseudonym and the trust's record key (keyed-hashed)."""
        return self.key.opaque_id("clinical-record", f"{self.trust}:{patient}:{record_key or ''}")

    def record(self, row: ValidRow) -> Pseudonymised:
        # as the images: where the trust's NHS number is in PatientID, a valid NHS number
        # given as the local ID is the NHS number (smartbox withdraw resolves it so too)
        nhs = row.nhs_number or (row.local_patient_id if self._id_is_nhs else None)
        patient = self.patient(nhs, row.local_patient_id)
        shift = timedelta(days=self._pseudo.date_shift_days(patient))

        def shifted(day: date) -> str:
            return (day + shift).isoformat()

        record: dict[str, Any] = {
            "document": "clinical.record",
            "version": 1,
            "record_id": self.record_id(patient, row.record_key),
            "trust": self.trust,
            "patient": patient,
            "key_version": self.key.version,
            "swabs": [
                {"date": shifted(day), "result": result} for day, result in sorted(row.swabs)
            ],
            "comorbidities": list(row.comorbidities),
        }
        for name, day in sorted(row.dates.items()):
            record[name] = shifted(day)
        if row.age is not None:
            record["age"] = min(row.age, AGE_CAP)
        for name in ("sex", "ethnicity", "outcome"):
            value = getattr(row, name)
            if value is not None:
                record[name] = value
        return Pseudonymised(row.number, record)
