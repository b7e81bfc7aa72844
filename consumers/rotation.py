"""Key rotation that keeps every patient's history linked (``smartbox rotate-key``).

A new pseudonymisation key gives every patient a new pseudonym, every study a new pseudo UID
and every patient a new date shift. Run with the *new* key configured
(``SMARTBOX_PSEUDONYM_KEY`` and a new ``SMARTBOX_PSEUDONYM_KEY_VERSION``), ``rotate`` reads
the identity index (``consumers.identity_index``) and, for every identifier in it:

* computes its pseudonym under the new key and records it (so the next rotation can map from
  it, and the old key can be destroyed: the old pseudonyms are in the index);
* maps each older version's pseudonym to it: patients (with the change of their date shift,
  ``date_shift_delta_days``: an old study's dates plus the delta are on the new key's
  timeline) and pseudo study UIDs (a study exported before the rotation and amended or
  re-sent after it is the same study);
* carries withdrawals over: a patient withdrawn under the old pseudonym is withdrawn under
  the new one (later studies held back), and ``smartbox withdraw`` finds their exported
  studies through the new pseudonym.

Per trust, the pairs become one ``rotation.map`` document, content-addressed (a re-run with
nothing new is the same map and queues nothing). It waits in the trust's rotation outbox and
travels in the trust's next export batch like a withdrawal: copied to the national bucket and
listed with its sha256 in the Ed25519-signed batch manifest; the national reference consumer
applies it (``consumers.national_links``) and says ``applied`` in its receipt, which drops it
from the outbox. Safe to repeat: run it again once every anonymiser runs with the new key, to
map what an anonymiser still on the old key recorded meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import schemas
from consumers.deid.policy import PolicyBuilder
from consumers.deid.pseudonyms import Pseudonymiser
from smartbox import layout
from smartbox.errors import ConfigError
from smartbox.keys import KEY_VERSION_ENV, RegionalKey
from smartbox.store import ObjectStore, put_json, unanswered
from smartbox.transfer import read_verified

from .identity_index import Entry, IdentityIndex
from .identity_index import require as require_index

log = logging.getLogger(__name__)


@dataclass
class TrustRotation:
    """What a rotation did for one trust (counts only: nothing identifying)."""

    identities: int = 0
    recorded: int = 0
    patients: int = 0
    studies: int = 0
    withdrawals_carried: int = 0
    rotation_id: str | None = None
    queued: bool = False


@dataclass
class RotationReport:
    to_version: str
    trusts: dict[str, TrustRotation] = field(default_factory=dict)


def _under(key: RegionalKey, entry: Entry, max_shift: int) -> tuple[str, int | None]:
    """The entry's identifier's pseudonym (and date shift) under ``key``."""
    pseudo = Pseudonymiser(key, entry.trust, max_shift)
    if entry.kind == "patient":
        pseudonym = pseudo.patient_of(entry.message)
        return pseudonym, pseudo.date_shift_days(pseudonym)
    return pseudo.uid(entry.message), None


def rotate(
    index: IdentityIndex,
    staging: ObjectStore,
    bucket: str,
    key: RegionalKey,
    builder: PolicyBuilder,
) -> RotationReport:
    """Map every older pseudonym in the index to ``key``'s and queue the maps for export."""
    report = RotationReport(key.version)
    for trust in index.trusts():
        done = report.trusts[trust] = TrustRotation()
        patients: list[dict[str, Any]] = []
        studies: list[dict[str, Any]] = []
        for group in index.identities(trust):
            first = group[0]
            new, shift = _under(key, first, builder.max_date_shift_days)
            done.identities += 1
            current = [e for e in group if e.version == key.version]
            if current and current[0].pseudonym != new:
                raise ConfigError(
                    f"{KEY_VERSION_ENV}: the index holds other pseudonyms for version "
                    f"{key.version!r}: the key changed but its version did not (set a new one)"
                )
            if not current:
                index.put(Entry(trust, first.kind, first.message, key.version, new, shift))
                done.recorded += 1
            for old in group:
                if old.version == key.version or old.pseudonym == new:
                    continue
                pair: dict[str, Any] = {
                    "from": old.pseudonym,
                    "to": new,
                    "from_version": old.version,
                }
                if first.kind == "patient":
                    delta = (shift or 0) - (old.date_shift_days or 0)
                    pair["date_shift_delta_days"] = delta if old.date_shift_days is not None else 0
                    patients.append(pair)
                else:
                    studies.append(pair)
        done.patients, done.studies = len(patients), len(studies)
        if patients or studies:
            done.rotation_id, done.queued = _queue(
                staging, bucket, trust, key.version, patients, studies
            )
            done.withdrawals_carried = _carry_withdrawals(staging, bucket, patients)
        log.info(
            "%s: rotation to %s: %d identities, %d patients and %d studies mapped",
            trust,
            key.version,
            done.identities,
            done.patients,
            done.studies,
        )
    return report


def _queue(
    staging: ObjectStore,
    bucket: str,
    trust: str,
    version: str,
    patients: list[dict[str, Any]],
    studies: list[dict[str, Any]],
) -> tuple[str, bool]:
    """Write the trust's map and its outbox entry; (rotation id, whether it is new)."""
    patients.sort(key=lambda p: (p["from"], p["to"]))
    studies.sort(key=lambda p: (p["from"], p["to"]))
    content = json.dumps([trust, version, patients, studies], sort_keys=True).encode()
    rotation_id = hashlib.sha256(b"rotation:" + content).hexdigest()[:32]
    map_key = layout.rotation_map_key(trust, rotation_id)
    if staging.exists(bucket, map_key):
        return rotation_id, False  # the same map (a re-run with nothing new): queued already
    document = {
        "document": "rotation.map",
        "version": 1,
        "rotation_id": rotation_id,
        "trust": trust,
        "to_version": version,
        "created_at": time.time(),
        "patients": patients,
        "studies": studies,
    }
    schemas.validate_document("rotation.map", document)
    data = put_json(staging, bucket, map_key, document)
    put_json(
        staging,
        bucket,
        layout.rotation_outbox_key(trust, rotation_id),
        {
            "trust": trust,
            "rotation_id": rotation_id,
            "map_key": map_key,
            "sha256": hashlib.sha256(data).hexdigest(),
            "patients": len(patients),
            "studies": len(studies),
            "batch_id": None,
        },
    )
    return rotation_id, True


def _carry_withdrawals(staging: ObjectStore, bucket: str, patients: list[dict[str, Any]]) -> int:
    """Withdrawals and the exporter's patient index follow the patient to the new pseudonym."""
    carried = 0
    for pair in patients:
        old, new = pair["from"], pair["to"]
        prefix = layout.patient_prefix(old)
        for marker in list(staging.list_keys(bucket, prefix)):
            staging.put_bytes(bucket, layout.patient_prefix(new) + marker[len(prefix) :], b"")
        if staging.exists(bucket, layout.withdrawn_key(old)) and not staging.exists(
            bucket, layout.withdrawn_key(new)
        ):
            put_json(
                staging,
                bucket,
                layout.withdrawn_key(new),
                {"requested_by": "rotation", "at": time.time()},
            )
            carried += 1
    if carried:  # readers drop their cached "not withdrawn" answers
        staging.put_bytes(bucket, layout.withdrawn_generation_key(), uuid.uuid4().hex.encode())
    return carried


# --- the exporter's side: the outbox, travelling in the trust's next batch -------------------
def pending(
    store: ObjectStore, bucket: str, trust: str, *, timeout_seconds: float, now: float
) -> list[dict[str, Any]]:
    """Outbox entries to send: never sent, or sent and unanswered for ``timeout_seconds``."""
    prefix = layout.rotation_outbox_prefix(trust)
    return unanswered(store, bucket, prefix, timeout_seconds=timeout_seconds, now=now)


def export(
    store: ObjectStore,
    bucket: str,
    national: ObjectStore,
    national_bucket: str,
    entries: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Copy the maps to the national bucket (sha256 checked); their national batch items."""
    items = []
    for entry in entries:
        data = read_verified(store, bucket, entry["map_key"], entry["sha256"])
        key = layout.national_rotation_key(entry["trust"], entry["rotation_id"])
        national.put_bytes(national_bucket, key, data)
        items.append(
            {
                "rotation_id": entry["rotation_id"],
                "key": key,
                "sha256": entry["sha256"],
                "patients": entry["patients"],
                "studies": entry["studies"],
            }
        )
    return items


def mark_sent(
    store: ObjectStore, bucket: str, entries: list[dict[str, Any]], batch_id: str, now: float
) -> None:
    """The maps are in the published batch ``batch_id``: re-sent only if it goes unanswered."""
    for entry in entries:
        entry.update(batch_id=batch_id, sent_at=now)
        put_json(
            store, bucket, layout.rotation_outbox_key(entry["trust"], entry["rotation_id"]), entry
        )


def applied(store: ObjectStore, bucket: str, trust: str, rotation_id: str) -> None:
    """The national side applied the map: it leaves the outbox (the map itself is kept)."""
    store.delete(bucket, layout.rotation_outbox_key(trust, rotation_id))


def rotate_key_command(settings: Any, environ: dict[str, str] | None = None) -> int:
    """``smartbox rotate-key``: with the new key configured, map and queue; one line a trust."""
    from smartbox.s3 import S3Store

    store = S3Store(settings.s3)
    index = require_index(IdentityIndex.from_env(store, environ))
    key = RegionalKey.from_env(environ)
    report = rotate(index, store, settings.staging_bucket, key, PolicyBuilder.from_env(environ))
    for trust, done in sorted(report.trusts.items()):
        state = (
            "queued for its next export batch"
            if done.queued
            else "queued already"
            if done.rotation_id
            else "nothing to map"
        )
        print(
            f"{trust}: {done.identities} identities; {done.patients} patient and "
            f"{done.studies} study pseudonyms mapped to {key.version} ({state}); "
            f"{done.withdrawals_carried} withdrawals carried over"
        )
    if not report.trusts:
        print("the identity index is empty: nothing to map")
    return 0
