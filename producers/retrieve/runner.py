"""The cohort process of one trust: query the archive for each cohort patient, retrieve what
matches to the trust's own receiver, gently, off-peak, resumably.

Work is pulled from the cohort database (``state``): nothing is held in memory that a crash
would lose. Patients due are asked for their studies (C-FIND, STUDY level, their date window);
the answers and the patient's ``queried`` state are written in one transaction. Studies due
are moved (C-MOVE to ``move_destination``; or C-GET, each instance passed on to the receiver
by ``forward``): the receiver stores them and they follow the pushed path, marked
``retrieved`` (backfill) by their Move Originator AE Title.

Idempotent: before a move the receiver's ledger is asked (``received``); a study it holds
whole is not asked for again, one it holds in part (a move cut by a crash or an archive
restart) has only its missing instances moved (IMAGE level). A study whose move was under way
when this process died waits ``resume_grace_seconds`` before that check, so sub-operations
still in flight land first.

Failures are retried with exponential backoff and their reason kept, up to ``max_attempts``,
then the study (or patient) is ``failed``, with the reason, in ``smartbox cohort report``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from smartbox import metrics

from .config import Archive, RetrieveConfig
from .limits import Associations, TokenBucket
from .matching import decide, rules_for
from .received import ReceiverLedger
from .rows import query_key
from .scu import ArchiveClient, RetrieveError
from .state import CohortState, Patient, Study
from .window import Window

log = logging.getLogger("producers.retrieve")


@dataclass
class Peer:
    """One archive with its client, window and buckets."""

    archive: Archive
    client: ArchiveClient
    window: Window
    instances: TokenBucket
    queries: TokenBucket


class CohortRunner:
    """Processes every active cohort of one trust until ``stop`` is set."""

    def __init__(
        self,
        config: RetrieveConfig,
        state: CohortState,
        ledger: ReceiverLedger,
        pseudonym_uid: Callable[[str], str],
        *,
        ignore_window: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.state = state
        self.ledger = ledger
        self.pseudonym_uid = pseudonym_uid
        self.ignore_window = ignore_window
        self.clock = clock
        self.trust = config.trust
        self.peers = {
            a.name: Peer(
                a,
                ArchiveClient(
                    a,
                    config.calling_ae,
                    Associations(a.max_associations),
                    receiver=config.receiver,
                ),
                Window(a.window_start, a.window_hours, a.timezone),
                TokenBucket(a.instances_per_second, a.burst_instances),
                TokenBucket(a.queries_per_second, max(1.0, a.queries_per_second)),
            )
            for a in config.archives
        }
        self._stop = threading.Event()

    # --- scheduling ---------------------------------------------------------------------
    def open_archives(self) -> set[str]:
        """The archives inside their own off-peak window now (all with ``ignore_window``)."""
        if self.ignore_window:
            return set(self.peers)
        now = datetime.fromtimestamp(self.clock(), UTC)
        return {name for name, p in self.peers.items() if p.window.is_open(now)}

    def window_open(self) -> bool:
        """Whether any archive may be asked anything now."""
        return bool(self.open_archives())

    def next_opening(self, names: set[str]) -> float:
        """When the first of these archives' windows next opens (now if one is open)."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        return min(self.peers[n].window.next_open(now).timestamp() for n in names)

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1`` (exponential, capped, with jitter)."""
        base = self.config.retry_initial_seconds * 2 ** max(0, attempts - 1)
        delay = min(self.config.retry_max_seconds, base)
        return float(delay * (1 + random.random() * 0.1))  # noqa: S311 - jitter, not secrets

    def run(self, stop: threading.Event, *, once: bool = False, poll: float = 0.5) -> None:
        """Work until ``stop`` (``once``: until no cohort has work due or waiting)."""
        self._stop = stop
        workers = sum(a.max_associations for a in self.config.archives)
        in_flight: dict[tuple[str, int], Future[None]] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cohort") as pool:
            while not stop.is_set():
                for key in [k for k, f in in_flight.items() if f.done()]:
                    in_flight.pop(key).result()  # a bug surfaces here, not silently
                metrics.RETRIEVE_ACTIVE_COHORTS.labels(self.trust).set(self.state.active_cohorts())
                is_open = self.open_archives()
                metrics.RETRIEVE_WINDOW_OPEN.labels(self.trust).set(1 if is_open else 0)
                if is_open and len(in_flight) < workers:
                    now = self.clock()
                    for patient in self.state.due_patients(now, workers):
                        key = ("p", patient.id)
                        if key not in in_flight and len(in_flight) < workers:
                            in_flight[key] = pool.submit(self._guard, self.query, patient)
                    for study in self.state.due_studies(now, workers, is_open):
                        key = ("s", study.id)
                        if key not in in_flight and len(in_flight) < workers:
                            in_flight[key] = pool.submit(self._guard, self.retrieve, study)
                if once and not in_flight and not self.state.active_cohorts():
                    return
                stop.wait(poll)
            for future in in_flight.values():
                future.result()

    def _guard(self, fn: Callable[..., None], item: object) -> None:
        try:
            fn(item)
        except InterruptedError:
            pass  # stopping: the item stays in its state and is resumed at the next start

    def _take(self, bucket: TokenBucket, n: float, limit: str) -> None:
        if bucket.take(n, self._stop):
            metrics.RETRIEVE_RATE_LIMIT_WAITS.labels(self.trust, limit).inc()

    # --- a patient ----------------------------------------------------------------------
    def query(self, patient: Patient) -> None:
        """Ask each archive for the patient's studies in the patient's date window, each
        archive inside its own off-peak window; record what matches. The patient is
        ``queried`` once every archive has answered; until then it waits for the next of
        the others' windows."""
        rules = rules_for(self.config.filters, patient.modalities, patient.body_parts)
        todo = {n for n in self.peers if n not in patient.archives_queried}
        asking = todo & self.open_archives()
        if not asking:
            if todo:
                self.state.defer_patient(patient, self.next_opening(todo))
            else:  # every archive asked before (a restart): nothing left
                self.state.record_query(patient, [])
            return
        records = []
        try:
            for name, peer in self.peers.items():
                if name not in asking:
                    continue
                self._take(peer.queries, 1, "queries")
                attribute, value = query_key(
                    self.config.nhs_number_attribute,
                    patient.query_id if patient.by_nhs else None,
                    None if patient.by_nhs else patient.query_id,
                )
                found = peer.client.find_studies(
                    attribute, value, patient.date_from, patient.date_to
                )
                metrics.RETRIEVE_QUERIES.labels(self.trust, "ok").inc()
                for study in found:

                    def series(peer: Peer = peer, uid: str = study.study_uid) -> list:
                        self._take(peer.queries, 1, "queries")
                        return peer.client.find_below(
                            "SERIES", uid, ("Modality", "BodyPartExamined")
                        )

                    wanted, reason = decide(study, rules, series)
                    records.append(
                        (
                            name,
                            study.study_uid,
                            self.pseudonym_uid(study.study_uid),
                            ";".join(study.modalities),
                            study.instances,
                            "found" if wanted else "filtered",
                            reason,
                        )
                    )
        except RetrieveError as exc:
            metrics.RETRIEVE_QUERIES.labels(self.trust, "failed").inc()
            metrics.RETRIEVE_FAILURES.labels(self.trust, exc.reason).inc()
            attempts = patient.attempts + 1
            again = attempts < self.config.max_attempts
            next_at = self.clock() + self.backoff(attempts) if again else None
            self.state.query_failed(patient, exc.reason, next_at)
            log.warning(
                "%s: cohort %s row %d: query failed (%s), attempt %d%s",
                self.trust,
                patient.cohort_id,
                patient.row,
                exc.reason,
                attempts,
                "" if again else ": given up",
            )
            return
        later = todo - asking
        pending_until = self.next_opening(later) if later else None
        self.state.record_query(patient, records, sorted(asking), pending_until)
        n_wanted = sum(1 for r in records if r[5] == "found")
        metrics.RETRIEVE_STUDIES_FOUND.labels(self.trust).inc(n_wanted)
        metrics.RETRIEVE_STUDIES_FILTERED.labels(self.trust).inc(len(records) - n_wanted)
        log.info(
            "%s: cohort %s row %d: %d studies found, %d wanted%s",
            self.trust,
            patient.cohort_id,
            patient.row,
            len(records),
            n_wanted,
            f" ({len(later)} archive(s) to ask in their window)" if later else "",
        )

    # --- a study ------------------------------------------------------------------------
    def retrieve(self, study: Study) -> None:
        """Move one study to the receiver (or its missing instances), unless it is there."""
        now = self.clock()
        grace = self.config.resume_grace_seconds
        if study.state == "retrieving" and study.started_at and now < study.started_at + grace:
            self.state.defer(study, study.started_at + grace)  # a move of a crashed run
            return
        peer = self.peers.get(study.archive)
        if peer is None:  # the archive was removed from the trust file
            self.state.finish(study, "failed", "association_failed")
            return
        if study.archive not in self.open_archives():  # its own window is closed
            self.state.defer(study, self.next_opening({study.archive}))
            return
        try:
            missing: list[str] | None = None
            held = self.ledger.study_instances(study.study_uid)
            if held and study.instances is not None and held >= study.instances:
                self._done(study, 0)
                return
            if held:
                self._take(peer.queries, 1, "queries")
                answers = peer.client.find_below("IMAGE", study.study_uid, ("SOPInstanceUID",))
                sops = [str(a.get("SOPInstanceUID", "") or "") for a in answers]
                missing = self.ledger.missing([s for s in sops if s])
                if not missing:
                    self._done(study, 0)
                    return
                log.info(
                    "%s: cohort %s study %s: resuming, %d of %d instances to move",
                    self.trust,
                    study.cohort_id,
                    study.study_pseudonym,
                    len(missing),
                    len(sops),
                )
            expected = len(missing) if missing is not None else (study.instances or 1)
            self._take(peer.instances, expected, "instances")
            if study.archive not in self.open_archives():  # it closed while we waited: not now
                peer.instances.adjust(-expected)
                return
            self.state.start_move(study)
            result = peer.client.retrieve(self.config.move_destination, study.study_uid, missing)
            moved = result.completed + result.failed + result.warning
            peer.instances.adjust(moved - expected)
            metrics.RETRIEVE_INSTANCES.labels(self.trust).inc(result.completed)
            if result.status not in (0x0000, 0xB000) or result.failed:
                raise RetrieveError(
                    "move_incomplete" if result.completed else "move_failed",
                    f"status 0x{result.status:04X}, {result.failed} failed",
                )
        except RetrieveError as exc:
            self._failed(study, exc)
            return
        self._done(study, result.completed)

    def _done(self, study: Study, moved: int) -> None:
        ours = moved or study.attempts or study.state == "retrieving"
        state = "retrieved" if ours else "already_received"
        self.state.finish(study, state)
        metrics.RETRIEVE_STUDIES_RETRIEVED.labels(self.trust).inc()
        log.info(
            "%s: cohort %s study %s %s (%d instances retrieved)",
            self.trust,
            study.cohort_id,
            study.study_pseudonym,
            state,
            moved,
        )

    def _failed(self, study: Study, exc: RetrieveError) -> None:
        metrics.RETRIEVE_FAILURES.labels(self.trust, exc.reason).inc()
        attempts = study.attempts + 1
        if attempts >= self.config.max_attempts:
            self.state.finish(study, "failed", exc.reason)
            metrics.RETRIEVE_STUDIES_FAILED.labels(self.trust).inc()
        else:
            self.state.retry_later(study, exc.reason, self.clock() + self.backoff(attempts))
        log.warning(
            "%s: cohort %s study %s: %s (attempt %d)",
            self.trust,
            study.cohort_id,
            study.study_pseudonym,
            exc,
            attempts,
        )
