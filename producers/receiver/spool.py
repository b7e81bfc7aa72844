"""The receiver's spool: instances on local disk plus a SQLite ledger (WAL), both durable
before the C-STORE is answered.

Ledger states of an instance: ``spooled`` (on disk, acknowledged to the sender) ->
``batched`` (assigned to a batch of its study) -> ``uploaded`` (in quarantine) ->
``published`` (its batch's study.arrived confirmed; spool file deleted). A crash at any point
leaves rows that the relay resumes from; nothing is forgotten.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from smartbox.store import fsync_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    study_key TEXT NOT NULL,
    instance_key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    path TEXT NOT NULL,
    modality TEXT NOT NULL,
    received_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'spooled',
    batch_id TEXT,
    UNIQUE (instance_key, sha256)
);
CREATE INDEX IF NOT EXISTS instances_state ON instances (state, study_key);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    study_key TEXT NOT NULL,
    created_at REAL NOT NULL,
    amendment INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'open'
);
CREATE TABLE IF NOT EXISTS studies (
    study_key TEXT PRIMARY KEY,
    first_received_at REAL NOT NULL,
    announced INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class SpooledInstance:
    id: int
    study_key: str
    instance_key: str
    sha256: str
    size: int
    path: Path
    modality: str
    received_at: float


class Spool:
    """Durable intake for one trust: files under ``root`` and ``root/ledger.sqlite3``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "instances"
        self.files.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            root / "ledger.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- intake (association threads) ---------------------------------------------------
    def is_duplicate(self, instance_key: str, sha256: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM instances WHERE instance_key=? AND sha256=?",
                (instance_key, sha256),
            ).fetchone()
        return row is not None

    def has_other_version(self, instance_key: str, sha256: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM instances WHERE instance_key=? AND sha256<>?",
                (instance_key, sha256),
            ).fetchone()
        return row is not None

    def write(
        self,
        study_key: str,
        instance_key: str,
        sha256: str,
        data: bytes | memoryview,
        modality: str,
    ) -> bool:
        """Write, fsync and record one instance. False if it was already recorded."""
        directory = self.files / study_key
        directory.mkdir(exist_ok=True)
        path = directory / f"{instance_key}-{sha256[:16]}.dcm"
        tmp = directory / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, path)
        fsync_dir(directory)
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO instances"
                " (study_key, instance_key, sha256, size, path, modality, received_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (study_key, instance_key, sha256, len(data), str(path), modality, now),
            )
            db.execute(
                "INSERT OR IGNORE INTO studies (study_key, first_received_at) VALUES (?,?)",
                (study_key, now),
            )
        return cur.rowcount == 1

    # --- relay (one thread) -------------------------------------------------------------
    def studies_ready(self, quiet_seconds: float, max_wait_seconds: float) -> list[str]:
        """Studies with spooled instances that have been quiet long enough (or waited too long)."""
        now = time.time()
        with self._lock:
            rows = self._db.execute(
                "SELECT study_key, MAX(received_at), MIN(received_at) FROM instances"
                " WHERE state='spooled' GROUP BY study_key"
            ).fetchall()
        return [
            key
            for key, last, first in rows
            if now - last >= quiet_seconds or now - first >= max_wait_seconds
        ]

    def open_batch(self, study_key: str) -> str | None:
        """Assign a study's spooled instances to a new batch; returns its id (None if none)."""
        batch_id = uuid.uuid4().hex
        with self._tx() as db:
            announced = db.execute(
                "SELECT announced FROM studies WHERE study_key=?", (study_key,)
            ).fetchone()
            cur = db.execute(
                "UPDATE instances SET state='batched', batch_id=?"
                " WHERE study_key=? AND state='spooled'",
                (batch_id, study_key),
            )
            if cur.rowcount == 0:
                return None
            db.execute(
                "INSERT INTO batches (batch_id, study_key, created_at, amendment) VALUES (?,?,?,?)",
                (batch_id, study_key, time.time(), 1 if announced and announced[0] else 0),
            )
        return batch_id

    def open_batches(self) -> list[tuple[str, str, bool]]:
        """(batch_id, study_key, amendment) of every batch not yet announced, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT batch_id, study_key, amendment FROM batches WHERE state='open'"
                " ORDER BY created_at"
            ).fetchall()
        return [(b, s, bool(a)) for b, s, a in rows]

    def batch_instances(self, batch_id: str) -> list[tuple[SpooledInstance, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, study_key, instance_key, sha256, size, path, modality, received_at,"
                " state FROM instances WHERE batch_id=? ORDER BY id",
                (batch_id,),
            ).fetchall()
        return [(SpooledInstance(*r[:5], Path(r[5]), *r[6:8]), r[8]) for r in rows]

    def mark_uploaded(self, instance_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE instances SET state='uploaded' WHERE id=?", (instance_id,))

    def mark_published(self, batch_id: str, study_key: str) -> list[Path]:
        """Record the batch as announced; returns the spool files that may now be deleted."""
        with self._tx() as db:
            db.execute("UPDATE batches SET state='published' WHERE batch_id=?", (batch_id,))
            db.execute("UPDATE studies SET announced=1 WHERE study_key=?", (study_key,))
            rows = db.execute("SELECT path FROM instances WHERE batch_id=?", (batch_id,)).fetchall()
            db.execute("UPDATE instances SET state='published' WHERE batch_id=?", (batch_id,))
        return [Path(r[0]) for r in rows]

    # --- gauges -------------------------------------------------------------------------
    def pending_stats(self) -> tuple[int, int, float | None]:
        """(files, bytes, oldest received_at) of instances not yet published."""
        with self._lock:
            files, size, oldest = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size),0), MIN(received_at) FROM instances"
                " WHERE state<>'published'"
            ).fetchone()
        return int(files), int(size), oldest

    def close(self) -> None:
        with self._lock:
            self._db.close()
