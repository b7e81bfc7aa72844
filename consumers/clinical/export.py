"""Clinical records in the exporter's batches: their state, selection, copy and receipts.

A staged clinical record version has one small state object (``layout.clinical_state_key``:
``pending`` -> ``sent`` -> ``acked``; or ``failed`` after ``max_attempts`` rejected sends, or
``withdrawn``) and, until the national side accepts it, a queue marker. The exporter adds a
trust's queued records to the trust's first batch of a pass, as it adds withdrawals and
key-rotation maps (``pending``), so clinical data travels in the same nightly, signed batch
as the images: each record is copied, sha256 checked, into the national bucket under its
staged key and listed with its sha256 in the national batch manifest (v2), which the batch
id and the Ed25519 signature cover (``export``). Receipts act per record (``on_receipt``):
accepted -> acked, marker dropped; rejected, or no receipt within the timeout -> sent again
in a later batch, up to the export's ``max_attempts``.

A withdrawal (``smartbox withdraw``, ``withdraw_patient``) removes the patient's records not
yet exported from staging and queues a withdrawal of each exported one; those travel in the
trust's next batch (``clinical_withdrawals`` in the signed manifest v2) and the national side
deletes the record and its link, answering ``applied``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from consumers.withdraw import WithdrawalRegistry
from smartbox import layout, metrics
from smartbox.errors import NotFound
from smartbox.store import ObjectStore, get_json, put_json, unanswered
from smartbox.transfer import BadObject, copy_verified

log = logging.getLogger("consumers.exporter")
#: clinical records per batch (a record is ~1 KB): more wait for the next batch of the pass
MAX_PER_BATCH = 5000
STATES = ("pending", "sent", "acked", "failed", "withdrawn")


def export_id(key: str) -> str:
    """The export id of a staged record version: from its content-addressed key."""
    return hashlib.sha256(f"clinical:{key}".encode()).hexdigest()[:32]


def get(store: ObjectStore, bucket: str, trust: str, export_id: str) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = get_json(store, bucket, layout.clinical_state_key(trust, export_id))
    except NotFound:
        return None
    return state


def _put(store: ObjectStore, bucket: str, state: dict[str, Any]) -> None:
    if state["state"] not in STATES:
        raise ValueError(f"unknown clinical export state {state['state']!r}")
    put_json(store, bucket, layout.clinical_state_key(state["trust"], state["export_id"]), state)


def record(store: ObjectStore, bucket: str, entry: dict[str, Any]) -> None:
    """A newly staged version: its queue marker first, then its state (a crash between the
    two leaves a marker whose state is missing: the next selection drops it, the redelivered
    message writes both)."""
    state = {**entry, "state": "pending", "attempts": 0, "batch_id": None, "reasons": []}
    trust, eid = entry["trust"], entry["export_id"]
    store.put_bytes(bucket, layout.clinical_patient_key(entry["patient"], trust, eid), b"")
    store.put_bytes(bucket, layout.clinical_queue_key(trust, eid), b"")
    _put(store, bucket, state)


def ensure_queued(store: ObjectStore, bucket: str, trust: str, export_id: str) -> None:
    """A redelivery of a version recorded before: its marker, if it is still pending."""
    state = get(store, bucket, trust, export_id)
    if state is not None and state["state"] == "pending":
        store.put_bytes(bucket, layout.clinical_queue_key(trust, export_id), b"")


def pending(
    store: ObjectStore,
    bucket: str,
    trust: str,
    *,
    withdrawn: WithdrawalRegistry,
    timeout_seconds: float,
    now: float | None = None,
    limit: int = MAX_PER_BATCH,
    max_attempts: int | None = None,
) -> list[dict[str, Any]]:
    """The trust's records to send in its next batch: pending ones, and sent ones whose
    receipt is overdue (until ``max_attempts`` sends: then set aside as failed). A withdrawn
    patient's record is removed from staging instead."""
    now = time.time() if now is None else now
    out: list[dict[str, Any]] = []
    for key in store.list_keys(bucket, layout.clinical_queue_prefix(trust)):
        if len(out) >= limit:
            break
        eid = key.rsplit("/", 1)[-1]
        state = get(store, bucket, trust, eid)
        if state is None or state["state"] not in ("pending", "sent"):
            store.delete(bucket, key)  # stale marker
            continue
        if withdrawn.is_withdrawn(state["patient"]):
            store.delete(bucket, state["key"])
            state["state"] = "withdrawn"
            _put(store, bucket, state)
            store.delete(bucket, key)
            metrics.WITHDRAWALS.labels(trust, "held_back").inc()
            continue
        if state["state"] == "sent":
            if now - float(state.get("sent_at", now)) <= timeout_seconds:
                continue  # in flight, receipt not yet due
            metrics.CLINICAL_REJECTED.labels(trust, "no_receipt").inc()
            if max_attempts is not None and state["attempts"] >= max_attempts:
                state["state"] = "failed"
                state["reasons"] = [*state.get("reasons", []), "no_receipt"][-10:]
                _put(store, bucket, state)
                store.delete(bucket, key)
                log.error(
                    "%s: clinical record %s unanswered after %d sends: set aside",
                    trust,
                    eid,
                    state["attempts"],
                )
                continue
        out.append(
            {k: state[k] for k in ("export_id", "record_id", "patient", "key", "sha256", "size")}
            | {"recorded_at": float(state["recorded_at"]), "attempt": state["attempts"] + 1}
        )
    return out


def export(
    store: ObjectStore,
    bucket: str,
    national: ObjectStore,
    national_bucket: str,
    entries: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Copy the claimed records to the national bucket (streamed, sha256 and size checked);
    their national batch manifest items. A bad record (missing, changed) is left out, logged
    and counted; it stays queued, so the next pass tries it again."""
    items = []
    for entry in entries:
        try:
            copy_verified(
                store,
                bucket,
                national,
                national_bucket,
                entry["key"],
                entry["sha256"],
                entry["size"],
            )
        except BadObject as exc:
            metrics.EXPORT_BAD_OBJECTS.labels(entry["key"].split("/", 1)[0], exc.reason).inc()
            log.error("clinical record %s not exported: %s", entry["export_id"], exc.reason)
            continue
        items.append(dict(entry))
    return items


def mark_sent(
    store: ObjectStore,
    bucket: str,
    trust: str,
    items: list[dict[str, Any]],
    batch_id: str,
    now: float,
) -> None:
    """After the batch manifest is signed and stored: each record sent in ``batch_id``."""
    for item in items:
        state = get(store, bucket, trust, item["export_id"])
        if state is None or state["state"] not in ("pending", "sent"):
            continue
        state.update(state="sent", batch_id=batch_id, sent_at=now, attempts=item["attempt"])
        _put(store, bucket, state)
    if items:
        metrics.CLINICAL_EXPORTED.labels(trust).inc(len(items))


def on_receipt(
    store: ObjectStore,
    bucket: str,
    trust: str,
    batch_id: str,
    results: list[dict[str, Any]],
    *,
    max_attempts: int,
) -> None:
    """Act on the national side's answer per record (only a record sent in that batch moves)."""
    for result in results:
        state = get(store, bucket, trust, result["export_id"])
        if state is None or state["state"] != "sent" or state["batch_id"] != batch_id:
            continue  # a duplicate or late receipt: acted on already
        marker = layout.clinical_queue_key(trust, state["export_id"])
        if result["status"] == "accepted":
            state.update(state="acked", acked_at=time.time())
            _put(store, bucket, state)
            store.delete(bucket, marker)
            metrics.CLINICAL_ACKNOWLEDGED.labels(trust).inc()
            continue
        reason = result.get("reason", "unknown")
        state["reasons"] = [*state.get("reasons", []), reason][-10:]
        if state["attempts"] >= max_attempts:
            state["state"] = "failed"
            store.delete(bucket, marker)
            log.error(
                "%s: clinical record %s rejected %d times (%s): set aside",
                trust,
                state["export_id"],
                state["attempts"],
                reason,
            )
        else:
            state["state"] = "pending"
            log.error("%s: clinical record %s rejected: %s", trust, state["export_id"], reason)
        _put(store, bucket, state)
        metrics.CLINICAL_REJECTED.labels(trust, reason).inc()


# --- withdrawals ------------------------------------------------------------------------------
def withdraw_patient(store: ObjectStore, bucket: str, patient: str) -> tuple[int, int]:
    """Withdraw pseudonymous ``patient``'s clinical records: (removed before export, queued
    for the national side). Idempotent."""
    removed = queued = 0
    for key in list(store.list_keys(bucket, layout.clinical_patient_prefix(patient))):
        trust, eid = key.rsplit("/", 2)[-2:]
        state = get(store, bucket, trust, eid)
        if state is None:
            continue
        if state["state"] == "pending":
            store.delete(bucket, state["key"])
            store.delete(bucket, layout.clinical_queue_key(trust, eid))
            state.update(state="withdrawn", withdrawn_at=time.time())
            _put(store, bucket, state)
            removed += 1
        elif state["state"] in ("sent", "acked", "failed"):
            entry = {
                "trust": trust,
                "export_id": eid,
                "record_id": state["record_id"],
                "patient": state["patient"],
                "key": state["key"],
                "requested_at": time.time(),
                "batch_id": None,
            }
            put_json(store, bucket, layout.clinical_withdrawal_key(trust, eid), entry)
            store.delete(bucket, layout.clinical_queue_key(trust, eid))
            state.update(state="withdrawn", withdrawn_at=time.time())
            _put(store, bucket, state)
            queued += 1
    return removed, queued


def pending_withdrawals(
    store: ObjectStore, bucket: str, trust: str, *, timeout_seconds: float, now: float
) -> list[dict[str, Any]]:
    """Withdrawals of exported records to carry in the trust's next batch (never sent, or
    sent without an answer within the timeout)."""
    prefix = layout.clinical_withdrawal_prefix(trust)
    return unanswered(store, bucket, prefix, timeout_seconds=timeout_seconds, now=now)


def withdrawals_sent(
    store: ObjectStore, bucket: str, entries: list[dict[str, Any]], batch_id: str, now: float
) -> None:
    for entry in entries:
        entry.update(batch_id=batch_id, sent_at=now)
        put_json(
            store, bucket, layout.clinical_withdrawal_key(entry["trust"], entry["export_id"]), entry
        )


def withdrawals_applied(
    store: ObjectStore, bucket: str, trust: str, results: list[dict[str, Any]]
) -> None:
    """The national side deleted them: the outbox entries go."""
    for result in results:
        if result["status"] == "applied":
            store.delete(bucket, layout.clinical_withdrawal_key(trust, result["export_id"]))
            metrics.WITHDRAWALS.labels(trust, "acknowledged").inc()
