"""The outbox relay: from the ledger to ``quarantine`` and ``study.arrived``, on its own thread.

A study is complete when it has been quiet for ``quiet_seconds`` (or its oldest pending instance
has waited ``max_wait_seconds``). Its pending instances become a batch: each file is uploaded,
a batch manifest is written next to them, then ``study.arrived`` is published and confirmed;
only then are the spool files deleted. Every step is repeatable, so a crash or an outage
repeats work and never skips it. Instances that arrive after a study was announced form a new
batch marked ``amendment``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import schemas
from smartbox import layout, logs, metrics
from smartbox.bus import Bus
from smartbox.errors import PermanentError, SchemaError, TransientError
from smartbox.store import ObjectStore, put_json
from smartbox.trusts import TrustConfig

from .acquired import days_before_arrival
from .spool import Spool

log = logging.getLogger(__name__)
UPLOAD_THREADS = 4  # S3 PUTs in parallel (~125/s with one, ~175/s with four: MEASUREMENTS.md)
MAX_BACKOFF = 10.0
UPLOAD_CHUNK = 64
PRUNE_EVERY = 600.0  # seconds between ledger prunes (the first one at start)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def quarantine_key(trust: str, study_key: str, instance_key: str, sha256: str) -> str:
    return layout.quarantine_instance_key(trust, study_key, instance_key, sha256)


class Relay:
    """Moves completed studies from the spool to object storage and the bus."""

    def __init__(
        self,
        trust: TrustConfig,
        spool: Spool,
        store: ObjectStore,
        bus: Bus,
        bucket: str,
        *,
        poll_seconds: float = 0.5,
    ) -> None:
        self.trust = trust
        self.spool = spool
        self.store = store
        self.bus = bus
        self.bucket = bucket
        self.poll_seconds = poll_seconds
        self.producer = schemas.producer_name("receiver", trust.code)
        self._thread: threading.Thread | None = None
        self.healthy = True
        self._bucket_ready = False
        self.next_prune_at = 0.0  # monotonic; 0: at the first step
        self._uploads = ThreadPoolExecutor(
            UPLOAD_THREADS, thread_name_prefix=f"upload-{trust.code}"
        )

    def start(self, stop: threading.Event) -> None:
        self._thread = threading.Thread(
            target=self.run, args=(stop,), name=f"relay-{self.trust.code}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)

    def run(self, stop: threading.Event) -> None:
        """Step every ``poll_seconds``; after a failure, back off (up to MAX_BACKOFF) while the
        spool gauges keep being refreshed every poll."""
        backoff = self.poll_seconds
        next_step = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_step:
                try:
                    self.step()
                    self.healthy = True
                    backoff = self.poll_seconds
                except TransientError as exc:
                    self.healthy = False
                    metrics.RELAY_RETRIES.labels(self.trust.code).inc()
                    log.warning("%s: relay waiting for dependencies: %s", self.trust.code, exc)
                    backoff = min(max(backoff * 2, 1.0), MAX_BACKOFF)
                except Exception:  # noqa: BLE001 - keep relaying; the ledger keeps the work
                    self.healthy = False
                    log.exception("%s: relay step failed", self.trust.code)
                    backoff = min(max(backoff * 2, 1.0), MAX_BACKOFF)
                next_step = time.monotonic() + backoff
            try:
                self.update_gauges()
            except Exception:  # noqa: BLE001 - gauges must not stop the relay
                log.exception("%s: spool gauges failed", self.trust.code)
            stop.wait(self.poll_seconds)
        self._uploads.shutdown(wait=True)

    def step(self) -> int:
        """One pass: batch ready studies, announce open batches. Returns batches announced."""
        if not self._bucket_ready:
            self.store.ensure_bucket(self.bucket)
            self._bucket_ready = True
        if time.monotonic() >= self.next_prune_at:
            self.next_prune_at = time.monotonic() + PRUNE_EVERY
            self.prune_ledger()
        for study_key in self.spool.studies_ready(
            self.trust.quiet_seconds, self.trust.max_wait_seconds
        ):
            self.spool.open_batch(study_key)
        announced = 0
        for batch_id, study_key, amendment in self.spool.open_batches():
            self.announce(batch_id, study_key, amendment)
            announced += 1
        return announced

    def announce(self, batch_id: str, study_key: str, amendment: bool) -> None:
        code = self.trust.code
        rows = self.spool.batch_instances(batch_id)
        pending = [
            (inst.id, quarantine_key(code, study_key, inst.instance_key, inst.sha256), inst.path)
            for inst, state in rows
            if state == "batched"
        ]
        if self._upload(pending):
            rows = self.spool.batch_instances(batch_id)  # without the files that vanished
        if not rows:  # every file of the batch was lost (counted): nothing to say
            self.spool.mark_published(batch_id, study_key)
            return
        entries = [
            {
                "key": quarantine_key(code, study_key, inst.instance_key, inst.sha256),
                "sha256": inst.sha256,
                "size": inst.size,
                "modality": inst.modality,
            }
            for inst, _state in rows
        ]
        batch_key = layout.quarantine_batch_key(code, study_key, batch_id)
        origin = "retrieved" if all(i.move_originator for i, _ in rows) else "pushed"
        document = {
            "batch_id": batch_id,
            "trust": code,
            "study_key": study_key,
            "amendment": amendment,
            "instances": entries,
            # for the export's fairness: who sent it, and how old it was when it arrived
            "calling_aes": sorted({i.calling_ae for i, _ in rows if i.calling_ae}),
            # a cohort's retrieval (C-MOVE) is backfill: the archive says who asked for it
            "origin": origin,
            "move_originators": sorted({i.move_originator for i, _ in rows if i.move_originator}),
            "acquired_days_before_arrival": days_before_arrival(
                [(i.path, i.received_at) for i, _ in rows]
            ),
        }
        try:  # a storage contract: checked on write (and by the anonymiser on read)
            schemas.validate_document("quarantine.batch", document)
        except SchemaError as exc:
            raise PermanentError(f"{code}: batch manifest not written: {exc}") from None
        put_json(self.store, self.bucket, batch_key, document)
        first = min(i.received_at for i, _ in rows)
        last = max(i.received_at for i, _ in rows)
        message = schemas.make_message(
            "study.arrived",
            trust=code,
            producer=self.producer,
            body={
                "study_key": study_key,
                "bucket": self.bucket,
                "batch_key": batch_key,
                "batch_id": batch_id,
                "instance_count": len(entries),
                "bytes": sum(e["size"] for e in entries),
                "modalities": sorted({e["modality"] for e in entries}),
                "amendment": amendment,
                "first_received_at": _iso(first),
                "last_received_at": _iso(last),
                "origin": origin,
            },
        )
        with logs.message_context(message):  # the study's correlation id starts here
            self.bus.publish(message)  # returns once confirmed by the broker
            for path in self.spool.mark_published(batch_id, study_key):
                path.unlink(missing_ok=True)
            self.spool.forget_study_dir(study_key)
            metrics.STUDIES_ARRIVED.labels(code).inc()
            metrics.INSTANCES_PUBLISHED.labels(code).inc(len(entries))
            metrics.STUDY_COMPLETION.labels(code).observe(time.time() - first)
            log.info(
                "%s: study %s announced: %d instances%s",
                code,
                study_key,
                len(entries),
                " (amendment)" if amendment else "",
            )

    def _upload(self, pending: list[tuple[int, str, Path]]) -> int:
        """Upload files, a few in parallel, recording progress per chunk: a crash or an outage
        repeats only the chunk in flight; the first failure stops the batch.

        A file that has vanished from an intact spool is marked lost (counted) and left out;
        returns how many. Without that the batch, and every batch after it, would wait for it
        forever (the object store reports a missing local file as an outage).
        """
        vanished = {str(path) for _iid, _key, path in pending if not path.exists()}
        lost = 0
        if vanished and self.spool.files.is_dir():  # else the spool itself is gone: wait
            lost = self.spool.mark_lost(vanished)
            metrics.FAILURES.labels(self.trust.code, "receive", "spool_file_lost").inc(lost)
            pending = [p for p in pending if str(p[2]) not in vanished]
        for start in range(0, len(pending), UPLOAD_CHUNK):
            chunk = pending[start : start + UPLOAD_CHUNK]
            futures = [
                (iid, self._uploads.submit(self.store.put_file, self.bucket, key, path))
                for iid, key, path in chunk
            ]
            done: list[int] = []
            failure: BaseException | None = None
            for iid, future in futures:
                try:
                    future.result()
                    done.append(iid)
                except BaseException as exc:  # noqa: BLE001 - the first failure is raised below
                    failure = failure or exc
            self.spool.mark_uploaded(done)
            if isinstance(failure, FileNotFoundError):
                # vanished while uploading: the next step finds it missing and marks it lost
                raise TransientError("a spool file is missing") from failure
            if failure is not None:
                raise failure
        return lost

    def prune_ledger(self, now: float | None = None) -> int:
        """Forget what was published more than the trust's ``ledger_retention_days`` ago
        (small transactions; counted, logged without keys)."""
        code = self.trust.code
        n = self.spool.prune(self.trust.ledger_retention_days * 86400.0, now=now)
        if n:
            metrics.LEDGER_PRUNED.labels(code).inc(n)
            log.info(
                "%s: ledger: forgot %d instances published more than %g days ago",
                code,
                n,
                self.trust.ledger_retention_days,
            )
        return n

    def update_gauges(self) -> None:
        files, size, oldest = self.spool.pending_stats()
        code = self.trust.code
        metrics.SPOOL_FILES.labels(code).set(files)
        metrics.SPOOL_BYTES.labels(code).set(size)
        metrics.SPOOL_HIGH_WATER.labels(code).set(self.trust.spool_high_water_bytes)
        metrics.OLDEST_UNPUBLISHED.labels(code).set(time.time() - oldest if oldest else 0)
