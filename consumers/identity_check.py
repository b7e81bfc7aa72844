"""The study consistency check: one study, one patient.

Instances of one study that disagree on who the patient is - name, patient ID, birth date or
NHS number (``consumers.deid.identity``: keyed fingerprints, an absent value is unknown, not a
disagreement) - are a mis-filed instance or a merged study. Staged, they would go to the
national side under one pseudonym, linking two people's images as one person's. So they are
held back together (``patient_identity_conflict``), never staged:

* within a batch, by the instances' fingerprints: the instances that disagree with the
  study's majority, or, when there is no majority (a merged study), every instance
  (``consumers.deid.identity.outliers``);
* across batches of the same study (an amendment, a late instance), by the patient
  pseudonyms the study's earlier manifests recorded (``patient`` of each instance): an
  instance of a new batch under another pseudonym is held back. The earlier batches were
  staged (and may have been exported) under one patient; they stay as they are.

Objects this batch already staged are deleted again, except those an earlier manifest of the
study lists (content-addressed keys: a re-sent instance has the key of its first staging).
"""

from __future__ import annotations

from consumers.deid.identity import Fingerprint, outliers
from smartbox import layout
from smartbox.store import ObjectStore, get_json


def earlier_study(
    store: ObjectStore, bucket: str, trust: str, study_uid: str, batch_id: str
) -> tuple[set[str], set[str]]:
    """(patient pseudonyms, object keys) that the study's other staged manifests list."""
    patients: set[str] = set()
    keys: set[str] = set()
    own = layout.study_manifest_key(trust, study_uid, batch_id)
    for key in store.list_keys(bucket, layout.staged_study_prefix(trust, study_uid)):
        if key == own or not layout.is_study_manifest_key(key):
            continue
        for instance in get_json(store, bucket, key).get("instances", []):
            keys.add(instance["key"])
            if instance.get("patient"):
                patients.add(instance["patient"])
    return patients, keys


def conflicts(
    identities: list[Fingerprint | None],
    patients: list[str | None],
    earlier_patients: set[str],
) -> list[bool]:
    """For each instance of the batch, whether it is held back: it disagrees with the rest of
    the batch on its patient (``identity.outliers``), or it would be staged under another
    patient pseudonym than the study's earlier batches (`patients`: each instance's
    pseudonym, None when it is not staged anyway)."""
    out = outliers(identities)
    if earlier_patients:
        out = [
            o or (p is not None and p not in earlier_patients)
            for o, p in zip(out, patients, strict=True)
        ]
    return out
