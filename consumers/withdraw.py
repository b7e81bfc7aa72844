"""Withdrawals (national data opt-out): a patient's data leaves the export, now and later.

``withdraw`` takes a patient pseudonym (resolved inside the box from an NHS number, a local
patient ID or an accession number by ``smartbox withdraw``) and

* remembers it (``_export/withdrawn/<pseudonym>.json``): the anonymiser holds back every later
  instance of that patient with the reason ``withdrawn``, and the exporter never exports one;
* removes staged data not yet exported (the de-identified objects; the record says withdrawn);
* queues a withdrawal for data already exported: it travels in the trust's next batch, the
  national side deletes the study and says ``applied`` in its receipt;
* does the same for the patient's clinical records (``consumers.clinical.export``).

The NHS-number pseudonym is region-wide, so one withdrawal covers every trust's studies.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from smartbox import layout, metrics
from smartbox.errors import NotFound
from smartbox.store import ObjectStore, get_json, put_json

log = logging.getLogger(__name__)
_CACHE_SECONDS = 30.0


class WithdrawalRegistry:
    """Is this patient pseudonym withdrawn? One HEAD per patient, cached briefly."""

    def __init__(self, store: ObjectStore, bucket: str, *, cache_seconds: float = _CACHE_SECONDS):
        self.store = store
        self.bucket = bucket
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, bool]] = {}
        self._generation: bytes | None = None

    def refresh(self) -> None:
        """Drop cached negative answers if a withdrawal happened since (one small read: call it
        once per batch of work, not per instance)."""
        try:
            generation = self.store.get_bytes(self.bucket, layout.withdrawn_generation_key())
        except NotFound:
            generation = b""
        if generation != self._generation:
            self._cache = {p: hit for p, hit in self._cache.items() if hit[1]}
            self._generation = generation

    def is_withdrawn(self, patient: str) -> bool:
        now = time.monotonic()
        hit = self._cache.get(patient)
        if hit is not None and (hit[1] or now - hit[0] < self.cache_seconds):
            return hit[1]  # a withdrawal is never undone: a positive answer is kept
        answer = self.store.exists(self.bucket, layout.withdrawn_key(patient))
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[patient] = (now, answer)
        return answer

    def remove_unexported(self, record: dict[str, Any]) -> int:
        """Delete a not-yet-exported study version's staged objects; mark it withdrawn."""
        from .export_state import ExportState

        state = ExportState(self.store, self.bucket)
        removed = 0
        try:
            manifest = get_json(self.store, record["bucket"], record["manifest_key"])
        except NotFound:
            manifest = {"instances": []}
        for inst in manifest.get("instances", []):
            self.store.delete(record["bucket"], inst["key"])
            removed += 1
        state.dequeue(record)
        record.update(state="withdrawn", withdrawn_at=time.time())
        state.put(record)
        metrics.WITHDRAWALS.labels(record["trust"], "removed_unexported").inc()
        metrics.RETENTION_DELETED.labels("staging", "withdrawn").inc(removed)
        log.info(
            "%s: withdrawn study version %s: %d staged objects removed",
            record["trust"],
            record["export_id"],
            removed,
        )  # noqa: E501
        return removed


@dataclass
class WithdrawReport:
    removed_unexported: list[str] = field(default_factory=list)
    queued_for_national: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    clinical_removed: int = 0
    clinical_queued: int = 0


def withdraw(store: ObjectStore, bucket: str, trust: str, patient: str) -> WithdrawReport:
    """Withdraw pseudonymous ``patient`` (requested through ``trust``); idempotent."""
    from .export_state import ExportState

    state = ExportState(store, bucket)
    registry = WithdrawalRegistry(store, bucket)
    put_json(
        store, bucket, layout.withdrawn_key(patient), {"requested_by": trust, "at": time.time()}
    )
    store.put_bytes(bucket, layout.withdrawn_generation_key(), uuid.uuid4().hex.encode())
    metrics.WITHDRAWALS.labels(trust, "requested").inc()
    report = WithdrawReport()
    for key in list(store.list_keys(bucket, layout.patient_prefix(patient))):
        code, export_id = key.rsplit("/", 2)[-2:]
        record = state.get(code, export_id)
        archived = record is None
        if archived:  # compacted: the marker names the day of the archive that holds it
            day = store.get_bytes(bucket, key).decode("ascii", "replace").strip()
            record = state.archived(code, day).get(export_id) if day else None
        if record is None:
            continue
        if archived and record["state"] != "acked":
            report.already.append(export_id)  # held or withdrawn: nothing staged, nothing out
        elif record["state"] in ("pending", "held"):
            registry.remove_unexported(record)
            report.removed_unexported.append(export_id)
        elif record["state"] in ("sent", "acked", "failed"):
            state.save_withdrawal(
                {
                    "trust": code,
                    "export_id": export_id,
                    "study_uid": record["study_uid"],
                    "manifest_key": record["manifest_key"],
                    "requested_at": time.time(),
                    "batch_id": None,
                }
            )
            if not archived:  # an archived record is done: it is not brought back
                record.update(withdrawal_requested_at=time.time())
                state.put(record)
            report.queued_for_national.append(export_id)
        else:
            report.already.append(export_id)
    from .clinical.export import withdraw_patient

    # the patient's clinical records too (consumers.clinical.export)
    report.clinical_removed, report.clinical_queued = withdraw_patient(store, bucket, patient)
    log.info(
        "withdrawal via %s: %d removed before export, %d queued for the national side; "
        "clinical records: %d removed, %d queued",
        trust,
        len(report.removed_unexported),
        len(report.queued_for_national),
        report.clinical_removed,
        report.clinical_queued,
    )
    return report
