"""The outbox relay: from the ledger to ``quarantine`` and ``study.arrived``, on two threads.

The upload thread puts each instance in quarantine as soon as it is in the ledger (oldest
first, across every study of the trust, ``UPLOAD_THREADS`` PUTs in parallel over one warm
connection pool, a new one as each finishes; the digest intake recorded is signed as the
payload's, not computed again), so the uploads overlap with receiving and a study's bytes are
mostly in quarantine by the time it goes quiet. The relay thread batches a study once it has
been quiet for ``quiet_seconds`` (or its oldest pending instance has waited
``max_wait_seconds``); when every instance of the batch is uploaded it writes the batch
manifest, publishes ``study.arrived`` (in chunks of at most ``announce_chunk_instances``
instances, one message each, so that several anonymisers share a big study) and, once every
message is confirmed, deletes the spool files. Every step is repeatable (content-addressed
keys, the ledger records progress), so a crash or an outage repeats work and never skips it.
Instances that arrive after a study was announced form a new batch marked ``amendment``.

Back-pressure shows before the spool's high-water mark: the instances and bytes awaiting
upload and the age of the oldest of them are gauges (``smartbox_receiver_upload_backlog_*``,
``smartbox_receiver_upload_lag_seconds``) with an alert in ``deploy/prometheus``; and while the
uploads lag behind but progress, it reaches the senders: every poll the relay sets the intake
pace (``pace.py``), how long the SCP holds back each C-STORE response.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any

import schemas
from smartbox import layout, logs, metrics
from smartbox.bus import Bus
from smartbox.errors import PermanentError, SchemaError, TransientError
from smartbox.store import ObjectStore, put_json
from smartbox.trusts import TrustConfig

from .acquired import days_before_arrival
from .pace import IntakePace, lag_target
from .spool import Spool

log = logging.getLogger(__name__)
UPLOAD_THREADS = 4  # S3 PUTs in parallel (~125/s with one, ~175/s with four: MEASUREMENTS.md)
UPLOAD_WINDOW = UPLOAD_THREADS + 2  # submitted at once: a thread never waits for the next PUT
MAX_BACKOFF = 10.0
UPLOAD_CHUNK = 16  # uploads recorded in the ledger together (one transaction)
UPLOAD_IDLE = 0.1  # seconds between ledger polls when nothing awaits upload
PRUNE_EVERY = 600.0  # seconds between ledger prunes (the first one at start)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _take(finished: SimpleQueue[Future[None]], timeout: float) -> list[Future[None]]:
    """What has finished: waits up to ``timeout`` for the first, then takes what else has."""
    try:
        out = [finished.get(timeout=timeout)]
    except Empty:
        return []
    while True:
        try:
            out.append(finished.get_nowait())
        except Empty:
            return out


def chunks(total: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` slices of at most ``size`` covering ``range(total)``, in order."""
    return [(start, min(start + size, total)) for start in range(0, total, size)]


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
        self.chunk_size = max(1, trust.announce_chunk_instances)
        self.producer = schemas.producer_name("receiver", trust.code)
        self._thread: threading.Thread | None = None
        self._uploader: threading.Thread | None = None
        self.relay_healthy = True
        self.uploads_healthy = True
        self._bucket_ready = False
        self.next_prune_at = 0.0  # monotonic; 0: at the first step
        self._uploads = ThreadPoolExecutor(
            UPLOAD_THREADS, thread_name_prefix=f"upload-{trust.code}"
        )
        #: uploads finished since start: the pacing's measure of progress
        self.uploaded_total = 0
        self.pace = IntakePace(lag_target(trust.quiet_seconds, trust.intake_pace_lag_seconds))
        #: told each new pace (s per C-STORE response): the SCP, or its worker processes
        self.on_pace: Callable[[float], None] | None = None

    @property
    def healthy(self) -> bool:
        return self.relay_healthy and self.uploads_healthy

    def start(self, stop: threading.Event) -> None:
        self._uploader = threading.Thread(
            target=self.upload_loop, args=(stop,), name=f"uploads-{self.trust.code}", daemon=True
        )
        self._uploader.start()
        self._thread = threading.Thread(
            target=self.run, args=(stop,), name=f"relay-{self.trust.code}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        for thread in (self._thread, self._uploader):
            if thread:
                thread.join(timeout)

    def upload_loop(self, stop: threading.Event) -> None:
        """Upload what awaits upload until ``stop``; after a failure, back off (up to
        MAX_BACKOFF): the ledger keeps the work."""
        backoff = self.poll_seconds
        while not stop.is_set():
            try:
                if not self._bucket_ready:
                    self.store.ensure_bucket(self.bucket)
                    self._bucket_ready = True
                uploaded = self.upload_pending(stop)
                self.uploads_healthy = True
                backoff = self.poll_seconds
                if not uploaded:
                    stop.wait(UPLOAD_IDLE)
                continue
            except TransientError as exc:
                metrics.RELAY_RETRIES.labels(self.trust.code).inc()
                log.warning("%s: uploads waiting for dependencies: %s", self.trust.code, exc)
            except Exception:  # noqa: BLE001 - keep uploading; the ledger keeps the work
                log.exception("%s: upload failed", self.trust.code)
            self.uploads_healthy = False
            backoff = min(max(backoff * 2, 1.0), MAX_BACKOFF)
            stop.wait(backoff)

    def upload_pending(self, stop: threading.Event | None = None) -> int:
        """Upload what awaits upload, oldest first, until nothing does (or ``stop``); returns
        how many were uploaded or found lost.

        A window, not rounds: ``UPLOAD_WINDOW`` PUTs are kept submitted, a new one as each
        finishes, so one slow PUT holds up no other (in rounds of 16 that waited for their
        slowest, uploads ran at half this rate: ``bench/pipeline/RESULTS.md``). Progress is
        recorded in the ledger every ``UPLOAD_CHUNK`` uploads (one transaction), so a crash or
        an outage repeats only those. The first failure stops new PUTs; what is in flight
        finishes and is recorded, then the failure is raised.
        """
        code = self.trust.code
        queue: deque[tuple[int, str, Path, str]] = deque()
        in_flight: dict[Future[None], int] = {}
        finished: SimpleQueue[Future[None]] = SimpleQueue()  # each PUT's future, once done
        done: list[int] = []
        handled = 0
        failure: BaseException | None = None
        refill_at = 0.0  # monotonic: when the ledger may be asked again after it had nothing
        while True:
            if failure is None and not (stop is not None and stop.is_set()):
                if not queue and len(in_flight) < UPLOAD_WINDOW and time.monotonic() >= refill_at:
                    busy = set(in_flight.values()) | set(done)
                    rows = self.spool.awaiting_upload(len(busy) + UPLOAD_WINDOW * 4)
                    fresh = [
                        (iid, quarantine_key(code, s, i, h), path, h)
                        for iid, s, i, h, path in rows
                        if iid not in busy
                    ]
                    lost = self._mark_vanished(fresh)
                    handled += len(lost)
                    queue.extend(p for p in fresh if p[0] not in lost)
                    if not queue:
                        refill_at = time.monotonic() + UPLOAD_IDLE
                while queue and len(in_flight) < UPLOAD_WINDOW:
                    iid, key, path, digest = queue.popleft()
                    # the digest from intake is signed as the payload's: not hashed again
                    future = self._uploads.submit(
                        self.store.put_file, self.bucket, key, path, sha256=digest
                    )
                    in_flight[future] = iid
                    future.add_done_callback(finished.put)
            if not in_flight:
                break
            for future in _take(finished, UPLOAD_IDLE):
                iid = in_flight.pop(future)
                try:
                    future.result()
                    done.append(iid)
                except BaseException as exc:  # noqa: BLE001 - the first failure is raised below
                    failure = failure or exc
            if len(done) >= UPLOAD_CHUNK or (done and not in_flight):
                handled += self._recorded(done)
                done = []
        if done:
            handled += self._recorded(done)
        if isinstance(failure, FileNotFoundError):
            # vanished while uploading: the next pass finds it missing and marks it lost
            raise TransientError("a spool file is missing") from failure
        if failure is not None:
            raise failure
        return handled

    def _recorded(self, done: list[int]) -> int:
        """Record finished uploads in the ledger (one transaction) and count them as the
        pacing's progress; how many."""
        self.spool.mark_uploaded(done)
        self.uploaded_total += len(done)
        return len(done)

    def run(self, stop: threading.Event) -> None:
        """Step every ``poll_seconds``; after a failure, back off (up to MAX_BACKOFF) while the
        spool gauges keep being refreshed every poll."""
        backoff = self.poll_seconds
        next_step = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_step:
                try:
                    self.step()
                    self.relay_healthy = True
                    backoff = self.poll_seconds
                except TransientError as exc:
                    self.relay_healthy = False
                    metrics.RELAY_RETRIES.labels(self.trust.code).inc()
                    log.warning("%s: relay waiting for dependencies: %s", self.trust.code, exc)
                    backoff = min(max(backoff * 2, 1.0), MAX_BACKOFF)
                except Exception:  # noqa: BLE001 - keep relaying; the ledger keeps the work
                    self.relay_healthy = False
                    log.exception("%s: relay step failed", self.trust.code)
                    backoff = min(max(backoff * 2, 1.0), MAX_BACKOFF)
                next_step = time.monotonic() + backoff
            try:
                self.update_gauges()
            except Exception:  # noqa: BLE001 - gauges must not stop the relay
                log.exception("%s: spool gauges failed", self.trust.code)
            stop.wait(self.poll_seconds)
        if self._uploader is not None:  # the upload thread's last submissions first
            self._uploader.join()
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
        if self._uploader is None:  # stepped by hand (no upload thread): upload first
            self.upload_pending()
        announced = 0
        for batch_id, study_key, amendment in self.spool.open_batches():
            announced += self.announce(batch_id, study_key, amendment)
        return announced

    def announce(self, batch_id: str, study_key: str, amendment: bool) -> bool:
        """Announce a batch once every instance of it is uploaded (the upload thread puts
        them in quarantine, oldest first); False while some are still waiting."""
        code = self.trust.code
        if self.spool.batch_waiting(batch_id):
            return False
        rows = self.spool.batch_instances(batch_id)  # all uploaded: only this thread batches
        if not rows:  # every file of the batch was lost (counted): nothing to say
            self.spool.mark_published(batch_id, study_key)
            return True
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
                [(i.path, i.received_at, i.acquired_days) for i, _ in rows]
            ),
        }
        try:  # a storage contract: checked on write (and by the anonymiser on read)
            schemas.validate_document("quarantine.batch", document)
        except SchemaError as exc:
            raise PermanentError(f"{code}: batch manifest not written: {exc}") from None
        put_json(self.store, self.bucket, batch_key, document)
        first = min(i.received_at for i, _ in rows)
        last = max(i.received_at for i, _ in rows)
        body: dict[str, Any] = {
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
        }
        messages: list[dict[str, Any]] = []
        for index, (start, stop) in enumerate(chunks(len(entries), self.chunk_size)):
            chunk = {"index": index, "count": -(-len(entries) // self.chunk_size)}
            messages.append(
                schemas.make_message(
                    "study.arrived",
                    trust=code,
                    producer=self.producer,
                    # one correlation id for the study, whatever the number of chunks
                    correlation_id=messages[0]["correlation_id"] if messages else None,
                    body={**body, "chunk": {**chunk, "start": start, "stop": stop}},
                )
            )
        with logs.message_context(messages[0]):  # the study's correlation id starts here
            for message in messages:
                self.bus.publish(message)  # returns once confirmed by the broker
            for path in self.spool.mark_published(batch_id, study_key):
                path.unlink(missing_ok=True)
            self.spool.forget_study_dir(study_key)
            metrics.STUDIES_ARRIVED.labels(code).inc()
            metrics.INSTANCES_PUBLISHED.labels(code).inc(len(entries))
            metrics.STUDY_COMPLETION.labels(code).observe(time.time() - first)
            log.info(
                "%s: study %s announced: %d instances in %d messages%s",
                code,
                study_key,
                len(entries),
                len(messages),
                " (amendment)" if amendment else "",
            )
        return True

    def _mark_vanished(self, pending: list[tuple[int, str, Path, str]]) -> set[int]:
        """Ids of the files that have vanished from an intact spool, marked lost (counted) so
        that they are left out; without that the batch, and every batch after it, would wait
        for them forever (the object store reports a missing local file as an outage)."""
        vanished = {iid: str(path) for iid, _key, path, _sha in pending if not path.exists()}
        if not vanished or not self.spool.files.is_dir():  # else the spool itself is gone: wait
            return set()
        lost = self.spool.mark_lost(set(vanished.values()))
        metrics.FAILURES.labels(self.trust.code, "receive", "spool_file_lost").inc(lost)
        return set(vanished)

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
        files, size, oldest = self.spool.upload_backlog()
        lag = time.time() - oldest if oldest else 0.0
        metrics.UPLOAD_BACKLOG.labels(code).set(files)
        metrics.UPLOAD_BACKLOG_BYTES.labels(code).set(size)
        metrics.UPLOAD_LAG.labels(code).set(lag)
        self.update_pace(lag)

    def update_pace(self, lag: float) -> None:
        """The intake pace from the upload lag now (``pace.IntakePace``), passed on when it
        changes."""
        before = self.pace.pace
        pace = self.pace.update(lag, self.uploaded_total, time.monotonic())
        metrics.INTAKE_PACE.labels(self.trust.code).set(pace)
        if pace != before and self.on_pace is not None:
            self.on_pace(pace)
