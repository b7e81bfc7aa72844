"""The exporter: study.staged -> a record; on schedule -> signed national batches; receipts.

State lives in object storage (``consumers.export_state``; keys in ``smartbox.layout``): a
``study.staged`` becomes a record and a queue marker, then is acked. An export pass (cron,
default 01:00 Europe/London, or ``smartbox export --now``) first takes the **lease** (a
conditional write: one pass at a time, whatever runs it), resumes any claim a crashed pass left,
re-queues studies whose receipt never came, then fills bounded batches **round-robin across
trusts, prospective studies before backfill**, until the queue is empty or the **window end**
(no new batch starts after it). Each batch is carried by ``consumers.export_batch``.

Receipts are acted on per study: accepted -> acknowledged (exactly once: only a ``sent`` record
of that batch moves); rejected or never answered -> re-queued for the next window, up to
``max_attempts`` sends, then set aside as failed (dead marker, metric, in ``smartbox
reconcile``) -- never an endless loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import schemas
from smartbox import layout, logs, metrics
from smartbox.bus import Bus
from smartbox.errors import (
    ConfigError,
    PermanentError,
    SchemaError,
    TransientError,
)
from smartbox.lease import Lease, LeaseLost
from smartbox.signing import Signer
from smartbox.store import ObjectStore, get_json, put_json
from smartbox.trusts import TrustConfig, TrustRegistry

from . import rotation
from .clinical import export as clinical_export
from .export_batch import BatchRunner, selection_id
from .export_canary import export_probe, probe_state
from .export_compact import compact
from .export_gauges import GaugeKeeping
from .export_policy import ExportPolicy, classify
from .export_receipts import ReceiptHandling
from .export_schedule import Schedule, run_scheduler
from .export_state import ExportState, new_record
from .withdraw import WithdrawalRegistry

log = logging.getLogger(__name__)
__all__ = ["ExportSummary", "Exporter", "Schedule", "run_scheduler"]


@dataclass
class ExportSummary:
    """What one pass did, per trust."""

    batches: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    studies: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    instances: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    set_aside: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    clinical: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failed_trusts: list[str] = field(default_factory=list)
    lease_holder: str | None = None  # another pass held the lease: this one did nothing
    window_closed: bool = False

    @property
    def total_instances(self) -> int:
        return sum(self.instances.values())


class Exporter(ReceiptHandling, GaugeKeeping):
    """Records staged studies, exports them in passes, acts on receipts."""

    def __init__(
        self,
        store: ObjectStore,
        national: ObjectStore,
        bus: Bus,
        *,
        signer: Signer,
        policy: ExportPolicy | None = None,
        staging_bucket: str = "staging",
        national_bucket: str = "national",
        trusts: TrustRegistry | dict[str, TrustConfig] | None = None,
        quarantine_bucket: str | None = None,
    ) -> None:
        self.store = store
        self.national = national
        self.bus = bus
        self.signer = signer
        self.policy = policy or ExportPolicy()
        self.staging = staging_bucket
        self.national_bucket = national_bucket
        if self.policy.canary_bucket == national_bucket:
            raise ConfigError(
                "environment: SMARTBOX_EXPORT_CANARY_BUCKET: must not be the national bucket "
                f"({national_bucket}): probe studies never go there"
            )
        self.quarantine = quarantine_bucket  # listed (never read) for the unprocessed gauge
        self.state = ExportState(store, staging_bucket)
        # trust files say which studies are backfill (re-read when they change)
        self.trusts = (
            trusts if isinstance(trusts, TrustRegistry) else TrustRegistry(None, static=trusts)
        )
        # no negative caching here: the exporter is the last gate before the national side
        self.withdrawn = WithdrawalRegistry(store, staging_bucket, cache_seconds=0.0)
        self._pass_lock = threading.Lock()
        self._known_trusts: set[str] = set()
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # tests move time
        self._pending: dict[str, list[float]] = defaultdict(lambda: [0, 0])  # studies, bytes

    # --- consuming study.staged: a constant number of small writes, whatever the backlog --
    def handle(self, message: dict[str, Any]) -> None:
        """A ``study.staged`` becomes a record; a replayed ``export.failed``, one more round."""
        if message["schema"] == "export.failed":
            self.retry_failed(message)
            return
        body, code = message["body"], message["trust"]
        record = self.state.get(code, body["batch_id"])
        if record is not None and self.state.has_day(code, record["day"], record["export_id"]):
            return  # a redelivery of a study already recorded
        if record is None:
            klass = classify(self._trust(code), body.get("source"))
            record = new_record(code, body, message, klass)
            if body.get("synthetic") and record["state"] == "pending":
                record.update(synthetic=True, state=probe_state(self))  # consumers.export_canary
            record["patients"] = self._patients(record)
            if any(self.withdrawn.is_withdrawn(p) for p in record["patients"]):
                record["state"] = "withdrawn"
                metrics.WITHDRAWALS.labels(code, "held_back").inc()
            self.state.put(record)
        for patient in record["patients"]:
            self.store.put_bytes(
                self.staging, layout.patient_key(patient, code, record["export_id"]), b""
            )
        if record["state"] == "pending" and record.get("synthetic"):
            export_probe(self, record)  # to the canary bucket, never queued for the national
        elif record["state"] == "pending":
            self.state.enqueue(record)
            self._pending[code][0] += 1
            self._pending[code][1] += record["bytes"]
            self._set_gauges(code)
        if code not in self._known_trusts:
            self.state.mark_trust(code)
            self._known_trusts.add(code)
        self.state.mark_day(record)  # last: the record is complete
        log.info("%s: study version %s recorded: %s", code, record["export_id"], record["state"])

    def _trust(self, code: str) -> TrustConfig | None:
        try:
            return self.trusts.get(code)
        except ConfigError:
            return None  # no trust file here: every study of it is prospective

    def _patients(self, record: dict[str, Any]) -> list[str]:
        if not record["instances"]:
            return []
        manifest = get_json(self.store, record["bucket"], record["manifest_key"])
        try:
            schemas.validate_document("staging.study", manifest)
        except SchemaError as exc:
            raise PermanentError(f"study manifest invalid: {exc}") from None
        return sorted({i["patient"] for i in manifest["instances"] if i.get("patient")})

    # --- an export pass ---------------------------------------------------------------------
    def export_pass(
        self, *, progress: Callable[[int], None] = lambda n: None, max_batches: int | None = None
    ) -> ExportSummary:
        """One pass under the lease: resume, expire, then fill batches fairly until done."""
        with self._pass_lock:
            summary = ExportSummary()
            lease = Lease(self.store, self.staging, layout.LEASE, ttl=self.policy.lease_ttl_seconds)  # type: ignore[arg-type]
            if not lease.acquire():
                summary.lease_holder = str((lease.holder or {}).get("owner", "another pass"))
                log.warning("export pass skipped: the lease is held by %s", summary.lease_holder)
                return summary
            try:
                self._run_pass(lease, summary, progress, max_batches)
            except LeaseLost as exc:
                log.error("export pass stopped: %s", exc)
                summary.failed_trusts.append("*")
            finally:
                lease.release()
            if summary.failed_trusts:
                metrics.EXPORT_BATCHES.labels("failed").inc()
            else:
                metrics.EXPORT_BATCHES.labels("published" if summary.batches else "empty").inc()
                now = time.time()
                put_json(
                    self.store,
                    self.staging,
                    layout.LAST_SUCCESS,
                    {"at": now, "batches": dict(summary.batches)},
                )
                metrics.LAST_EXPORT_SUCCESS.set(now)
            return summary

    def _run_pass(
        self,
        lease: Lease,
        summary: ExportSummary,
        progress: Callable[[int], None],
        max_batches: int | None,
    ) -> None:
        self.national.ensure_bucket(self.national_bucket)
        runner = BatchRunner(
            self.state,
            self.national,
            self.national_bucket,
            self.bus,
            self.signer,
            heartbeat=lease.renew,
            progress=progress,
        )
        for key, claim in self.state.open_claims():
            self._guard(claim["trust"], summary, partial(self._finish, runner, key, claim, summary))
        trusts = self.state.trusts()
        for code in trusts:
            self._guard(code, summary, partial(self._expire_receipts, code))
        deadline = self.policy.deadline(self.clock())
        tried: set[str] = set()
        withdrawals_sent: set[str] = set()
        made = 0
        for klass in layout.CLASSES:
            active = [c for c in trusts if c not in summary.failed_trusts]
            while active:
                for code in list(active):
                    if deadline is not None and self.clock() >= deadline:
                        summary.window_closed = True
                        return
                    if max_batches is not None and made >= max_batches:
                        return
                    select = partial(self._select, code, klass, tried, withdrawals_sent)
                    chosen = self._guard(code, summary, select)
                    if not chosen:
                        active.remove(code)
                        continue
                    key, claim = chosen
                    finish = partial(self._finish, runner, key, claim, summary)
                    if self._guard(code, summary, finish) is None:
                        active.remove(code)
                    made += 1
                    lease.renew()
        for code in trusts:
            self._set_gauges(code, self._oldest(code))
        for code in trusts:  # done records and receipts into one archive object per day
            self._guard(code, summary, partial(compact, self.state, code))

    def _guard(self, code: str, summary: ExportSummary, fn: Callable[[], Any]) -> Any:
        """One trust's failure must not hold back the others: its work stays queued."""
        try:
            return fn()
        except LeaseLost:
            raise
        except (TransientError, PermanentError) as exc:
            kind = "transient" if isinstance(exc, TransientError) else "permanent"
            if code not in summary.failed_trusts:
                summary.failed_trusts.append(code)
            metrics.FAILURES.labels(code, "export", kind).inc()
            log.error("%s: export failed, stays queued: %s", code, exc)
            return None

    def _select(
        self, code: str, klass: str, tried: set[str], withdrawals_sent: set[str]
    ) -> tuple[str, dict[str, Any]] | None:
        """The next batch of a trust's queue (oldest first, within the size limits)."""
        ids: list[str] = []
        attempts: dict[str, int] = {}
        size = 0
        for day, export_id in self.state.queued(code, klass):
            if export_id in tried:
                continue
            record = self.state.get(code, export_id)
            if (
                record is None
                or record["state"] != "pending"
                or record["class"] != klass
                or record.get("synthetic")  # a probe study never goes to the national bucket
            ):
                self.state.drop_queued_key(code, klass, day, export_id)  # stale marker
                continue
            if any(self.withdrawn.is_withdrawn(p) for p in record["patients"]):
                self.withdrawn.remove_unexported(record)
                continue
            if ids and (
                len(ids) >= self.policy.max_batch_studies
                or size + record["bytes"] > self.policy.max_batch_bytes
            ):
                break
            ids.append(export_id)
            attempts[export_id] = record["attempts"] + 1
            size += record["bytes"]
            tried.add(export_id)
        withdrawals: list[dict[str, Any]] = []
        rotations: list[dict[str, Any]] = []  # key-rotation maps travel like withdrawals
        clinical: list[dict[str, Any]] = []  # and so do clinical records
        clinical_withdrawals: list[dict[str, Any]] = []
        if code not in withdrawals_sent:
            withdrawals_sent.add(code)
            now = time.time()
            withdrawals = [
                w
                for w in self.state.withdrawals(code)
                if not w.get("batch_id")
                or now - w.get("sent_at", 0) > self.policy.receipt_timeout_seconds
            ]
            rotations = rotation.pending(
                self.store,
                self.staging,
                code,
                timeout_seconds=self.policy.receipt_timeout_seconds,
                now=now,
            )
        # the trust's clinical records travel in its first batch of the pass that has images
        # (the data team gets a patient's records with the scans), or alone at the end
        if f"{code}/clinical" not in withdrawals_sent and (ids or klass == layout.CLASSES[-1]):
            withdrawals_sent.add(f"{code}/clinical")
            clinical = clinical_export.pending(
                self.store,
                self.staging,
                code,
                withdrawn=self.withdrawn,
                timeout_seconds=self.policy.receipt_timeout_seconds,
                now=time.time(),
                max_attempts=self.policy.max_attempts,
            )
            clinical_withdrawals = clinical_export.pending_withdrawals(
                self.store,
                self.staging,
                code,
                timeout_seconds=self.policy.receipt_timeout_seconds,
                now=time.time(),
            )
        if not ids and not withdrawals and not rotations and not clinical:
            if not clinical_withdrawals:
                return None
        entries = [(i, attempts[i]) for i in ids] + [(w["export_id"], 0) for w in withdrawals]
        entries += [(r["rotation_id"], 0) for r in rotations]
        entries += [(c["export_id"], c["attempt"]) for c in clinical]
        entries += [("w" + w["export_id"], 0) for w in clinical_withdrawals]
        key = layout.claim_key(code, selection_id(code, entries))
        claim = {
            "trust": code,
            "class": klass,
            "ids": ids,
            "attempts": attempts,
            "progress": {},
            "withdrawals": withdrawals,
            "rotations": rotations,
            **({"clinical": clinical} if clinical else {}),
            **({"clinical_withdrawals": clinical_withdrawals} if clinical_withdrawals else {}),
            "message": None,
            "created_at": time.time(),
        }
        if not self.state.create_claim(key, claim):
            claim = get_json(self.store, self.staging, key)  # a crashed pass's: resume it
        return key, claim

    def _finish(
        self, runner: BatchRunner, key: str, claim: dict[str, Any], summary: ExportSummary
    ) -> bool:
        code = claim["trust"]
        started = time.monotonic()
        claim = runner.run(key, claim)
        for export_id, p in claim["progress"].items():
            if p["status"] == "bad":
                summary.set_aside[code] += 1
                record = self.state.get(code, export_id)
                if record is not None and record["state"] == "pending":
                    record["attempts"] += 1
                    record["state"] = "sent"  # so that _requeue applies its bound
                    self._pending[code][0] -= 1
                    self._pending[code][1] -= record["bytes"]
                    self._requeue(record, p["reason"])
        message = claim.get("message")
        if message is None:
            return True
        body = message["body"]
        summary.batches[code].append(body["batch_id"])
        summary.studies[code] += body["study_count"]
        summary.instances[code] += body["instance_count"]
        metrics.STUDIES_EXPORTED.labels(code).inc(body["study_count"])
        metrics.INSTANCES_EXPORTED.labels(code).inc(body["instance_count"])
        resent = sum(1 for s in body["studies"] if s["attempt"] > 1)
        if resent:
            metrics.STUDIES_RESENT.labels(code).inc(resent)
        if body["withdrawals"]:
            metrics.WITHDRAWALS.labels(code, "published").inc(len(body["withdrawals"]))
        if body.get("clinical"):
            summary.clinical[code] += len(body["clinical"])
        self._pending[code][0] -= body["study_count"]
        self._pending[code][1] -= body["bytes"]
        metrics.STAGE_SECONDS.labels(code, "export").observe(time.monotonic() - started)
        log.info(
            "%s: export batch %s: %d studies, %d instances, %d withdrawals, %d clinical records",
            code,
            body["batch_id"],
            body["study_count"],
            body["instance_count"],
            len(body["withdrawals"]),
            len(body.get("clinical", [])),
        )
        for study in body["studies"]:  # each on its own line, under its own correlation id
            with logs.context(correlation_id=study.get("correlation_id")):
                log.info(
                    "%s: study version %s exported in batch %s (attempt %d)",
                    code,
                    study["export_id"],
                    body["batch_id"],
                    study["attempt"],
                )
        return True
