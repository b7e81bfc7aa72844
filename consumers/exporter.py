"""The exporter: study.staged -> pending record; on schedule -> national copy + export.batch.

State lives in object storage, not in memory and not in unacked messages: each staged batch
becomes a pending record ``_export/pending/<trust>/<batch_id>.json`` in the staging bucket and
the message is acked. An export pass (cron, default 01:00 Europe/London, or ``smartbox export
--now``) groups pending records by trust; per trust it copies every staged object to the
national destination (its own endpoint and credentials), writes a batch manifest there
(sha256 per object), publishes ``export.batch`` and confirms it, and only then moves the
pending records to ``_export/done/<batch>/``. A crash mid-pass leaves the records pending:
the next pass copies the same objects to the same keys again; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

import schemas
from smartbox import metrics
from smartbox.bus import Bus
from smartbox.errors import NotFound, PermanentError, TransientError
from smartbox.store import ObjectStore, get_json, put_json

log = logging.getLogger(__name__)
PENDING = "_export/pending/"
DONE = "_export/done/"
LAST_SUCCESS = "_export/last_success.json"
RECEIPTS = "_export/receipts/"


@dataclass
class ExportSummary:
    """What one pass did, per trust."""

    batches: dict[str, str]
    studies: dict[str, int]
    instances: dict[str, int]
    failed_trusts: list[str]

    @property
    def total_instances(self) -> int:
        return sum(self.instances.values())


class Exporter:
    """Records staged studies and exports them in passes."""

    def __init__(
        self,
        store: ObjectStore,
        national: ObjectStore,
        bus: Bus,
        *,
        staging_bucket: str = "staging",
        national_bucket: str = "national",
    ) -> None:
        self.store = store
        self.national = national
        self.bus = bus
        self.staging = staging_bucket
        self.national_bucket = national_bucket
        self.producer = schemas.producer_name("exporter")
        self._pass_lock = threading.Lock()

    def restore_state(self) -> None:
        """Set the gauges from the state in object storage (after a restart)."""
        try:
            last = get_json(self.store, self.staging, LAST_SUCCESS)
            metrics.LAST_EXPORT_SUCCESS.set(float(last["at"]))
        except (NotFound, KeyError, TypeError, ValueError):
            pass
        self.refresh_pending_gauge()

    # --- consuming study.staged ---------------------------------------------------------
    def handle(self, message: dict[str, Any]) -> None:
        body = message["body"]
        code = message["trust"]
        record = {
            "trust": code,
            "study_uid": body["study_uid"],
            "batch_id": body["batch_id"],
            "manifest_key": body["manifest_key"],
            "bucket": body["bucket"],
            "instances_staged": body["instances_staged"],
            "message_id": message["message_id"],
            "correlation_id": message["correlation_id"],
            "recorded_at": time.time(),
        }
        put_json(self.store, self.staging, f"{PENDING}{code}/{body['batch_id']}.json", record)
        self.refresh_pending_gauge()

    def handle_receipt(self, message: dict[str, Any]) -> None:
        """Record the national side's receipt next to the export it acknowledges."""
        body = message["body"]
        code = message["trust"]
        put_json(
            self.store,
            self.staging,
            f"{RECEIPTS}{code}/{body['batch_id']}.json",
            {**body, "trust": code, "message_id": message["message_id"]},
        )
        metrics.EXPORT_RECEIPTS.labels(code, body["status"]).inc()
        if body["status"] != "complete":
            log.error(
                "%s: national ingest reports batch %s %s: %d of %d verified",
                code,
                body["batch_id"],
                body["status"],
                body["instances_verified"],
                body["instances_expected"],
            )

    def pending(self) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """Pending records by trust: (record key, record)."""
        by_trust: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        for key in self.store.list_keys(self.staging, PENDING):
            record = get_json(self.store, self.staging, key)
            by_trust[record["trust"]].append((key, record))
        return dict(by_trust)

    def refresh_pending_gauge(self) -> None:
        studies: dict[str, set[str]] = defaultdict(set)
        for key in self.store.list_keys(self.staging, PENDING):
            code = key[len(PENDING) :].split("/", 1)[0]
            studies[code].add(key)
        for code, keys in studies.items():
            metrics.STUDIES_PENDING_EXPORT.labels(code).set(len(keys))

    # --- an export pass -----------------------------------------------------------------
    def export_pass(self) -> ExportSummary:
        """Export everything pending, one export.batch per trust."""
        with self._pass_lock:
            summary = ExportSummary({}, {}, {}, [])
            self.national.ensure_bucket(self.national_bucket)
            pending = self.pending()
            for code in sorted(pending):
                try:
                    self._export_trust(code, pending[code], summary)
                except (TransientError, PermanentError) as exc:
                    # one trust's failure must not hold back the others; its records stay
                    # pending (a permanent one also raises SmartboxExportFailed every pass)
                    kind = "transient" if isinstance(exc, TransientError) else "permanent"
                    summary.failed_trusts.append(code)
                    metrics.FAILURES.labels(code, "export", kind).inc()
                    log.error("%s: export failed, stays pending: %s", code, exc)
            if summary.failed_trusts:
                metrics.EXPORT_BATCHES.labels("failed").inc()
            else:
                metrics.EXPORT_BATCHES.labels("published" if summary.batches else "empty").inc()
                now = time.time()
                put_json(
                    self.store, self.staging, LAST_SUCCESS, {"at": now, "batches": summary.batches}
                )
                metrics.LAST_EXPORT_SUCCESS.set(now)
            for code in pending:
                if code not in summary.failed_trusts:
                    metrics.STUDIES_PENDING_EXPORT.labels(code).set(0)
            return summary

    def _export_trust(
        self, code: str, records: list[tuple[str, dict[str, Any]]], summary: ExportSummary
    ) -> None:
        started = time.monotonic()
        batch_id = uuid.uuid4().hex
        objects: list[dict[str, Any]] = []
        studies: dict[str, int] = defaultdict(int)
        for _key, record in records:
            manifest = get_json(self.store, record["bucket"], record["manifest_key"])
            for inst in manifest["instances"]:
                data = self.store.get_bytes(record["bucket"], inst["key"])
                if hashlib.sha256(data).hexdigest() != inst["sha256"]:
                    raise PermanentError("staged object does not match its manifest sha256")
                self.national.put_bytes(self.national_bucket, inst["key"], data)
                objects.append(
                    {
                        "key": inst["key"],
                        "sha256": inst["sha256"],
                        "size": inst["size"],
                        "study_uid": inst["study_uid"],
                        "modality": inst.get("modality"),
                    }
                )
                studies[inst["study_uid"]] += 1
        study_list = [{"study_uid": uid, "instance_count": n} for uid, n in sorted(studies.items())]
        done_records = [r for _k, r in records]
        if objects:
            manifest_key = f"_batches/{code}/{batch_id}.json"
            manifest_bytes = put_json(
                self.national,
                self.national_bucket,
                manifest_key,
                {"batch_id": batch_id, "trust": code, "objects": objects, "studies": study_list},
            )
            parents = [
                {"message_id": r["message_id"], "correlation_id": r["correlation_id"]}
                for r in done_records
            ]
            message = schemas.make_message(
                "export.batch",
                trust=code,
                producer=self.producer,
                parents=parents,
                correlation_id=str(uuid.UUID(batch_id)),
                body={
                    "batch_id": batch_id,
                    "bucket": self.national_bucket,
                    "manifest_key": manifest_key,
                    "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
                    "study_count": len(study_list),
                    "instance_count": len(objects),
                    "bytes": sum(o["size"] for o in objects),
                    "studies": study_list,
                },
            )
            self.bus.publish(message)
            summary.batches[code] = batch_id
        for key, record in records:
            put_json(self.store, self.staging, f"{DONE}{batch_id}/{key[len(PENDING) :]}", record)
            self.store.delete(self.staging, key)
        summary.studies[code] = len(study_list)
        summary.instances[code] = len(objects)
        metrics.INSTANCES_EXPORTED.labels(code).inc(len(objects))
        metrics.STUDIES_EXPORTED.labels(code).inc(len(study_list))
        metrics.STAGE_SECONDS.labels(code, "export").observe(time.monotonic() - started)
        log.info(
            "%s: export batch %s: %d studies, %d instances",
            code,
            batch_id,
            len(study_list),
            len(objects),
        )


class Schedule:
    """A cron schedule in a time zone (default nightly at 01:00 Europe/London)."""

    def __init__(self, expression: str, timezone: str) -> None:
        if not croniter.is_valid(expression):
            raise ValueError(f"not a cron expression: {expression!r}")
        self.expression = expression
        self.tz = ZoneInfo(timezone)

    def next_after(self, now: datetime | None = None) -> datetime:
        base = now or datetime.now(self.tz)
        nxt: datetime = croniter(self.expression, base.astimezone(self.tz)).get_next(datetime)
        return nxt


def run_scheduler(exporter: Exporter, schedule: Schedule, stop: threading.Event) -> None:
    """Run export passes on the schedule until ``stop``; a failed pass is retried next time."""
    while not stop.is_set():
        nxt = schedule.next_after()
        log.info("next export pass at %s", nxt.isoformat())
        while not stop.is_set():
            remaining = (nxt - datetime.now(schedule.tz)).total_seconds()
            if remaining <= 0:
                break
            stop.wait(min(remaining, 30.0))
        if stop.is_set():
            return
        try:
            summary = exporter.export_pass()
            log.info("scheduled export: %d instances", summary.total_instances)
        except Exception:  # noqa: BLE001 - the next window retries; pending records remain
            log.exception("scheduled export pass failed")
            metrics.EXPORT_BATCHES.labels("failed").inc()
