"""The cohort process's own database: cohorts, their patients and every study found, with a
state each, so that a crash, a restart or an archive outage resumes where it stopped.

SQLite (WAL, synchronous FULL) at ``$SMARTBOX_STATE_DIR/retrieve/<TRUST>.sqlite3``, mode 0600:
it holds what a cohort file said (NHS numbers, local IDs) and the archive's study UIDs, so it
is identifiable and never leaves the box, like the receiver's spool. Reports read only
pseudonyms and counts from it.

Patient states: ``pending`` (not asked yet) -> ``queried`` (studies listed, maybe none) or
``failed`` (the query kept failing; reason and attempts kept). Study states: ``found``
(matches, to be retrieved) -> ``retrieving`` (a move was sent) -> ``retrieved`` (the archive
reported every sub-operation done: the receiver has them durably) or ``already_received``
(the receiver had every instance before we asked) or ``failed`` (after ``max_attempts``,
with the reason); ``filtered`` (found, not wanted: modality or body part, with the reason).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from smartbox.sqlite import immediate

from .rows import CohortRow

PATIENT_STATES = ("pending", "queried", "failed")
STUDY_STATES = ("found", "retrieving", "retrieved", "already_received", "failed", "filtered")
#: why an attempt failed (and the study or patient, after max_attempts): a closed list
FAILURE_REASONS = (
    "association_rejected",
    "association_failed",
    "move_failed",
    "move_incomplete",
    "query_failed",
)
#: why a study found is not retrieved (STYLE 20: one closed vocabulary)
FILTER_REASONS = ("modality", "body_part", "description_excluded")
REASONS = FAILURE_REASONS + FILTER_REASONS

SCHEMA = """
CREATE TABLE IF NOT EXISTS cohorts (
    cohort_id TEXT PRIMARY KEY,
    trust TEXT NOT NULL,
    source TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    rows_accepted INTEGER NOT NULL,
    rows_rejected INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'active'
);
CREATE TABLE IF NOT EXISTS patients (
    id INTEGER PRIMARY KEY,
    cohort_id TEXT NOT NULL,
    row INTEGER NOT NULL,
    nhs_number TEXT,
    patient_id TEXT,
    pseudonym TEXT NOT NULL,
    date_from TEXT NOT NULL,
    date_to TEXT NOT NULL,
    modalities TEXT NOT NULL,
    body_parts TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    reason TEXT,
    archives_queried TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS patients_state ON patients (state, next_at);
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    cohort_id TEXT NOT NULL,
    patient INTEGER NOT NULL,
    archive TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    study_pseudonym TEXT NOT NULL,
    modalities TEXT NOT NULL,
    instances INTEGER,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    started_at REAL,
    reason TEXT,
    UNIQUE (cohort_id, study_uid)
);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state, next_at);
"""


#: (archive, study uid, study pseudonym, modalities, instances, state, reason)
FoundRecord = tuple[str, str, str, str, int | None, str, str | None]


@dataclass(frozen=True, repr=False)
class Patient:
    id: int
    cohort_id: str
    row: int
    query_id: str
    pseudonym: str
    date_from: date
    date_to: date
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    attempts: int
    #: whether ``query_id`` is the NHS number (else the trust's local patient ID)
    by_nhs: bool = False
    #: the archives already asked (each is asked inside its own window)
    archives_queried: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Patient(id={self.id}, cohort={self.cohort_id})"


@dataclass(frozen=True, repr=False)
class Study:
    id: int
    cohort_id: str
    archive: str
    study_uid: str
    study_pseudonym: str
    instances: int | None
    state: str
    attempts: int
    started_at: float | None

    def __repr__(self) -> str:
        return f"Study(id={self.id}, cohort={self.cohort_id}, state={self.state})"


def state_path(state_dir: Path, trust: str) -> Path:
    return state_dir / "retrieve" / f"{trust}.sqlite3"


def new_cohort_id() -> str:
    """Opaque and short enough to type: ``C`` and 12 hex digits."""
    return "C" + uuid.uuid4().hex[:12]


def _codes(values: Iterable[str]) -> str:
    return ";".join(values)


class CohortState:
    """One trust's cohorts (one database per trust: one cohort process per trust)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not path.exists()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
        if fresh:
            os.chmod(path, 0o600)
        self._db.execute("PRAGMA busy_timeout=60000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.RLock()
        with self._tx() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            columns = {r[1] for r in db.execute("PRAGMA table_info(patients)")}
            if "archives_queried" not in columns:  # a database from before per-archive windows
                db.execute(
                    "ALTER TABLE patients ADD COLUMN archives_queried TEXT NOT NULL DEFAULT ''"
                )

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._db, self._lock)

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        self._db.close()

    # --- cohorts ------------------------------------------------------------------------
    def add_cohort(
        self,
        trust: str,
        source: str,
        rows: list[CohortRow],
        pseudonyms: list[str],
        rejected: int,
        cohort_id: str | None = None,
    ) -> str:
        """Store a cohort's validated rows (one transaction: all or nothing)."""
        cohort_id = cohort_id or new_cohort_id()
        with self._tx() as db:
            db.execute(
                "INSERT INTO cohorts (cohort_id, trust, source, submitted_at, rows_accepted,"
                " rows_rejected) VALUES (?,?,?,?,?,?)",
                (cohort_id, trust, source, time.time(), len(rows), rejected),
            )
            db.executemany(
                "INSERT INTO patients (cohort_id, row, nhs_number, patient_id, pseudonym,"
                " date_from, date_to, modalities, body_parts) VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    (
                        cohort_id,
                        r.row,
                        r.nhs_number,
                        r.patient_id,
                        p,
                        r.date_from.isoformat(),
                        r.date_to.isoformat(),
                        _codes(r.modalities),
                        _codes(r.body_parts),
                    )
                    for r, p in zip(rows, pseudonyms, strict=True)
                ],
            )
        return cohort_id

    def cohort(self, cohort_id: str) -> dict | None:
        rows = self._read(
            "SELECT cohort_id, trust, source, submitted_at, rows_accepted, rows_rejected, state"
            " FROM cohorts WHERE cohort_id=?",
            (cohort_id,),
        )
        if not rows:
            return None
        keys = ("cohort_id", "trust", "source", "submitted_at", "accepted", "rejected", "state")
        return dict(zip(keys, rows[0], strict=True))

    def cohorts(self) -> list[str]:
        return [r[0] for r in self._read("SELECT cohort_id FROM cohorts ORDER BY submitted_at")]

    def active_cohorts(self) -> int:
        """Cohorts with work left (patients to query or studies to retrieve)."""
        rows = self._read(
            "SELECT COUNT(DISTINCT cohort_id) FROM (SELECT cohort_id FROM patients"
            " WHERE state='pending' UNION ALL SELECT cohort_id FROM studies"
            " WHERE state IN ('found','retrieving'))"
        )
        return int(rows[0][0])

    # --- patients -----------------------------------------------------------------------
    def due_patients(self, now: float, limit: int = 16) -> list[Patient]:
        rows = self._read(
            "SELECT id, cohort_id, row, COALESCE(nhs_number, patient_id), pseudonym, date_from,"
            " date_to, modalities, body_parts, attempts, nhs_number IS NOT NULL,"
            " archives_queried FROM patients"
            " WHERE state='pending' AND next_at<=? ORDER BY id LIMIT ?",
            (now, limit),
        )
        return [
            Patient(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                date.fromisoformat(r[5]),
                date.fromisoformat(r[6]),
                tuple(c for c in r[7].split(";") if c),
                tuple(c for c in r[8].split(";") if c),
                r[9],
                bool(r[10]),
                tuple(a for a in r[11].split(";") if a),
            )
            for r in rows
        ]

    def record_query(
        self,
        patient: Patient,
        studies: list[FoundRecord],
        asked: Iterable[str] = (),
        pending_until: float | None = None,
    ) -> None:
        """A patient's C-FIND answered: its studies, each (archive, uid, pseudonym,
        modalities, instances, state, reason), and the patient ``queried``, in one
        transaction (a crash before it re-asks; after it, never again). With
        ``pending_until`` only the archives ``asked`` have answered: the patient stays
        pending until then (when the next of the others' windows opens)."""
        with self._tx() as db:
            for archive, uid, pseudonym, modalities, instances, state, reason in studies:
                db.execute(
                    "INSERT INTO studies (cohort_id, patient, archive, study_uid,"
                    " study_pseudonym, modalities, instances, state, reason)"
                    " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (cohort_id, study_uid) DO NOTHING",
                    (
                        patient.cohort_id,
                        patient.id,
                        archive,
                        uid,
                        pseudonym,
                        modalities,
                        instances,
                        state,
                        reason,
                    ),
                )
            if pending_until is not None:
                done = sorted(set(patient.archives_queried) | set(asked))
                db.execute(
                    "UPDATE patients SET archives_queried=?, next_at=?, reason=NULL WHERE id=?",
                    (_codes(done), pending_until, patient.id),
                )
                return
            db.execute(
                "UPDATE patients SET state='queried', attempts=attempts+1, reason=NULL WHERE id=?",
                (patient.id,),
            )

    def defer_patient(self, patient: Patient, next_at: float) -> None:
        """Not now (none of the archives left to ask is in its window): at ``next_at``."""
        with self._tx() as db:
            db.execute("UPDATE patients SET next_at=? WHERE id=?", (next_at, patient.id))

    def query_failed(self, patient: Patient, reason: str, next_at: float | None) -> None:
        """A C-FIND failed: retried at ``next_at``, or failed for good (None)."""
        with self._tx() as db:
            db.execute(
                "UPDATE patients SET attempts=attempts+1, reason=?, next_at=?, state=? WHERE id=?",
                (reason, next_at or 0, "pending" if next_at is not None else "failed", patient.id),
            )

    # --- studies ------------------------------------------------------------------------
    def _studies(self, where: str, args: tuple) -> list[Study]:
        columns = "id, cohort_id, archive, study_uid, study_pseudonym, instances, state"
        sql = f"SELECT {columns}, attempts, started_at FROM studies WHERE {where}"  # noqa: S608
        rows = self._read(sql, args)
        return [Study(*r) for r in rows]

    def due_studies(
        self, now: float, limit: int = 16, archives: Iterable[str] | None = None
    ) -> list[Study]:
        """Studies to retrieve now; only from ``archives`` (those in their window) if given."""
        args: tuple[str, ...] = ()
        where = ""
        if archives is not None:
            args = tuple(archives)
            if not args:
                return []
            where = f" AND archive IN ({','.join('?' * len(args))})"
        return self._studies(
            f"state IN ('found','retrieving') AND next_at<=?{where} ORDER BY id LIMIT ?",
            (now, *args, limit),
        )

    def start_move(self, study: Study) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET state='retrieving', started_at=? WHERE id=?",
                (time.time(), study.id),
            )

    def finish(self, study: Study, state: str, reason: str | None = None) -> None:
        if state not in STUDY_STATES:
            raise ValueError(f"unknown study state {state!r}")
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET state=?, reason=?, attempts=attempts+? WHERE id=?",
                (state, reason, 1 if state == "failed" else 0, study.id),
            )

    def retry_later(self, study: Study, reason: str, next_at: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET state='found', reason=?, next_at=?, attempts=attempts+1"
                " WHERE id=?",
                (reason, next_at, study.id),
            )

    def defer(self, study: Study, next_at: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE studies SET next_at=? WHERE id=?", (next_at, study.id))

    # --- progress -----------------------------------------------------------------------
    def patient_counts(self, cohort_id: str) -> dict[str, int]:
        rows = self._read(
            "SELECT state, COUNT(*) FROM patients WHERE cohort_id=? GROUP BY state", (cohort_id,)
        )
        return {s: n for s, n in rows}

    def study_counts(self, cohort_id: str) -> dict[str, int]:
        rows = self._read(
            "SELECT state, COUNT(*) FROM studies WHERE cohort_id=? GROUP BY state", (cohort_id,)
        )
        return {s: n for s, n in rows}

    def reasons(self, cohort_id: str) -> dict[tuple[str, str], int]:
        rows = self._read(
            "SELECT state, reason, COUNT(*) FROM studies WHERE cohort_id=? AND reason IS NOT NULL"
            " GROUP BY state, reason",
            (cohort_id,),
        )
        return {(s, r): n for s, r, n in rows}

    def patients_report(self, cohort_id: str) -> list[tuple[int, str, str, int, int]]:
        """Per patient: (row, pseudonym, state, studies matching, studies retrieved)."""
        return [
            (r[0], r[1], r[2], int(r[3] or 0), int(r[4] or 0))
            for r in self._read(
                "SELECT p.row, p.pseudonym, p.state,"
                " SUM(s.state NOT IN ('filtered')),"
                " SUM(s.state IN ('retrieved','already_received'))"
                " FROM patients p LEFT JOIN studies s ON s.patient=p.id"
                " WHERE p.cohort_id=? GROUP BY p.id ORDER BY p.row",
                (cohort_id,),
            )
        ]

    def studies_report(self, cohort_id: str) -> list[tuple[str, str, str, str | None]]:
        """Per study found: (patient pseudonym, study pseudonym, state, reason)."""
        return [
            (r[0], r[1], r[2], r[3])
            for r in self._read(
                "SELECT p.pseudonym, s.study_pseudonym, s.state, s.reason FROM studies s"
                " JOIN patients p ON p.id=s.patient WHERE s.cohort_id=? ORDER BY p.row, s.id",
                (cohort_id,),
            )
        ]
