"""Resolve a withdrawal request to patient pseudonyms, inside the box.

The identifiers (NHS number, local patient ID, accession number) never leave this function:
they are turned into the same keyed pseudonym the de-identifier gives that patient, with the
trust's own settings (which attribute holds the NHS number), so that ``withdraw`` can work on
pseudonyms only. An accession number is looked up in the identifiable originals still held in
quarantine (the only place it exists), read header-only.
"""

from __future__ import annotations

import io

import pydicom

from consumers.deid.policy import PolicyBuilder
from consumers.deid.pseudonyms import Pseudonymiser
from smartbox.errors import ConfigError
from smartbox.keys import RegionalKey
from smartbox.store import ObjectStore
from smartbox.trusts import TrustConfig


def _engine(trust: TrustConfig, key: RegionalKey) -> Pseudonymiser:
    # the trust's policy as the anonymiser builds it (OCR is not needed to name a patient)
    policy = PolicyBuilder.from_env().for_trust(trust, runnable=False)
    return Pseudonymiser(key, policy.trust_code, policy.max_date_shift_days)


def resolve_patient(
    store: ObjectStore,
    quarantine: str,
    trust: TrustConfig,
    key: RegionalKey,
    *,
    nhs_number: str | None = None,
    patient_id: str | None = None,
    accession: str | None = None,
) -> list[str]:
    """The pseudonyms the request names (empty if an accession number is not found)."""
    engine = _engine(trust, key)
    if nhs_number is not None:
        pseudonym, valid = engine.patient(nhs_number, None)
        if not valid:
            raise ConfigError("--nhs-number: not a valid NHS number (check digit)")
        return [pseudonym]
    if patient_id is not None:
        nhs = patient_id if trust.nhs_number_attribute == "PatientID" else None
        return [engine.patient(nhs, patient_id)[0]]
    if accession is None:
        raise ConfigError("name the patient: --nhs-number, --patient-id or --accession")
    found: set[str] = set()
    for obj_key in store.list_keys(quarantine, f"{trust.code}/"):
        if not obj_key.endswith(".dcm"):
            continue
        ds = pydicom.dcmread(
            io.BytesIO(store.get_bytes(quarantine, obj_key)), stop_before_pixels=True
        )
        if str(ds.get("AccessionNumber", "")).strip() == accession.strip():
            nhs = str(ds.get(trust.nhs_number_attribute, "") or "") or None
            found.add(engine.patient(nhs, str(ds.get("PatientID", "")) or None)[0])
    return sorted(found)
