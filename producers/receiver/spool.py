"""The receiver's spool: instances on local disk plus a SQLite ledger (WAL), both durable
before the C-STORE is answered.

Layout under the spool root: ``tmp/`` (datasets being received), ``instances/<study_key>/``
(accepted instances) and ``ledger.sqlite3``. Several SCP worker processes and the relay share
the ledger (SQLite serialises writers across processes; every write is one short
``BEGIN IMMEDIATE`` transaction).

Ledger states of an instance: ``spooled`` (on disk, acknowledged to the sender) -> ``batched``
(assigned to a batch of its study) -> ``uploaded`` (in quarantine) -> ``published`` (its
batch's study.arrived confirmed; spool file deleted). The relay uploads instances as soon as
they are spooled, so an instance is usually ``uploaded`` before its study goes quiet: an
``uploaded`` row without a batch is waiting for its study's batch, exactly like a ``spooled``
one (``open_batch`` takes both). ``lost`` marks a row whose file vanished
(a disk fault): it is counted and logged, never silently dropped, and never taken for a
duplicate: the same bytes sent again are stored and announced. A crash at any point leaves
rows that the relay resumes from; nothing is forgotten. The ``totals`` row keeps the bytes and
files not yet published, so the high-water check costs one indexed read, not a table scan.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from smartbox.sqlite import WriterLock, immediate
from smartbox.store import fsync_dir

from .recovery import PENDING, SpoolRecovery, record_instance

log = logging.getLogger(__name__)

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
    calling_ae TEXT NOT NULL DEFAULT '',
    move_originator TEXT NOT NULL DEFAULT '',
    -- days from acquisition to arrival, read from the header at intake (NULL: not known then)
    acquired_days INTEGER,
    UNIQUE (instance_key, sha256)
);
CREATE INDEX IF NOT EXISTS instances_state ON instances (state, study_key);
CREATE INDEX IF NOT EXISTS instances_state_age ON instances (state, received_at);
CREATE INDEX IF NOT EXISTS instances_batch ON instances (batch_id);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    study_key TEXT NOT NULL,
    created_at REAL NOT NULL,
    amendment INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'open'
);
CREATE INDEX IF NOT EXISTS batches_study ON batches (study_key);
-- the relay's open_batches reads only the few open batches: without this it scanned and sorted
-- every batch the ledger still remembers (ledger_retention_days of them). Created on open, so
-- a ledger from before it gets the index the first time a new receiver opens it.
CREATE INDEX IF NOT EXISTS batches_open ON batches (created_at) WHERE state = 'open';
CREATE TABLE IF NOT EXISTS studies (
    study_key TEXT PRIMARY KEY,
    first_received_at REAL NOT NULL,
    announced INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals (id, files, bytes)
    SELECT 1, COUNT(*), COALESCE(SUM(size), 0) FROM instances
    WHERE state IN ('spooled', 'batched', 'uploaded');
"""
#: the relay's question each cycle; the partial index ``batches_open`` answers it (a unit test
#: holds the query plan to that)
OPEN_BATCHES = (
    "SELECT batch_id, study_key, amendment FROM batches WHERE state='open'"
    " ORDER BY created_at, rowid"
)


class SpoolFull(Exception):
    """Accepting the instance would take the spool past its high-water mark."""


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
    calling_ae: str = ""
    #: the Move Originator AE Title of its C-STORE: "" when pushed, set when retrieved (C-MOVE)
    move_originator: str = ""
    #: days from its acquisition to its arrival, as read at intake (None: read the file)
    acquired_days: int | None = None


class Spool(SpoolRecovery):
    """Durable intake for one trust: files under ``root`` and ``root/ledger.sqlite3``."""

    def __init__(self, root: Path, *, durable_commits: bool = True) -> None:
        self.root = root
        self.files = root / "instances"
        self.tmp = root / "tmp"
        for d in (root, self.files, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            root / "ledger.sqlite3", check_same_thread=False, isolation_level=None, timeout=60
        )
        self._db.execute("PRAGMA busy_timeout=60000")
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: each commit fsyncs the WAL (the relay's state changes). NORMAL for intake: the
        # instance itself (file fsync, rename, directory fsync) is what must survive a power
        # cut; a ledger row lost with it is rebuilt from the file by ``recover``.
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable_commits else 'NORMAL'}")
        self._lock = threading.RLock()
        # every process that writes this ledger (SCP workers, relay, recovery) queues here
        self._writers = WriterLock(root / "ledger.lock")
        with self._tx() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(instances)")}
            if "calling_ae" not in columns:  # a ledger from before calling AEs were recorded
                db.execute("ALTER TABLE instances ADD COLUMN calling_ae TEXT NOT NULL DEFAULT ''")
            if "move_originator" not in columns:  # a ledger from before retrieval (cohorts)
                db.execute(
                    "ALTER TABLE instances ADD COLUMN move_originator TEXT NOT NULL DEFAULT ''"
                )
            if "acquired_days" not in columns:  # a ledger from before intake read the date
                db.execute("ALTER TABLE instances ADD COLUMN acquired_days INTEGER")
        self._study_dirs: set[str] = set()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._db, self._lock, self._writers)

    # --- intake (SCP association threads, possibly in several processes) ------------------
    def is_duplicate(self, instance_key: str, sha256: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM instances WHERE instance_key=? AND sha256=? AND state<>'lost'",
                (instance_key, sha256),
            ).fetchone()
        return row is not None

    def has_other_version(self, instance_key: str, sha256: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM instances WHERE instance_key=? AND sha256<>? AND state<>'lost'",
                (instance_key, sha256),
            ).fetchone()
        return row is not None

    def instance_path(self, study_key: str, instance_key: str, sha256: str) -> Path:
        return self.files / study_key / f"{instance_key}-{sha256[:16]}.dcm"

    def _study_dir(self, study_key: str) -> Path:
        directory = self.files / study_key
        if study_key not in self._study_dirs:
            try:
                directory.mkdir()
                fsync_dir(self.files)  # the new directory's entry must survive a crash too
            except FileExistsError:
                pass
            self._study_dirs.add(study_key)
        return directory

    def accept(
        self,
        tmp_path: Path,
        *,
        study_key: str,
        instance_key: str,
        sha256: str,
        size: int,
        modality: str,
        high_water: int,
        calling_ae: str = "",
        move_originator: str = "",
        acquired: date | None = None,
    ) -> bool:
        """Move an fsync'd file from ``tmp/`` into place and record it, durably.
        ``acquired``: its acquisition date, if the header told it (only the days from it to
        the arrival are kept).

        Returns False if the same bytes were already recorded (a concurrent duplicate).
        Raises SpoolFull past the high-water mark, OSError on a disk fault.
        """
        path = self.instance_path(study_key, instance_key, sha256)
        directory = self._study_dir(study_key)
        try:
            os.rename(tmp_path, path)
        except FileNotFoundError:
            # the study directory vanished (published and removed meanwhile): recreate it
            self._study_dirs.discard(study_key)
            directory = self._study_dir(study_key)
            os.rename(tmp_path, path)
        fsync_dir(directory)
        now = time.time()
        try:
            with self._tx() as db:
                files, total = db.execute("SELECT files, bytes FROM totals WHERE id=1").fetchone()
                if total + size > high_water:
                    raise SpoolFull(f"{files} files, {total} bytes pending")
                fresh = record_instance(
                    db,
                    study_key=study_key,
                    instance_key=instance_key,
                    sha256=sha256,
                    size=size,
                    path=path,
                    modality=modality,
                    received_at=now,
                    calling_ae=calling_ae,
                    move_originator=move_originator,
                    acquired_days=(
                        None
                        if acquired is None
                        else (datetime.fromtimestamp(now).date() - acquired).days
                    ),
                )
        except BaseException:
            path.unlink(missing_ok=True)  # never acknowledged: the sender keeps its copy
            raise
        return fresh

    # --- relay (one thread in the parent process) -----------------------------------------
    def studies_ready(self, quiet_seconds: float, max_wait_seconds: float) -> list[str]:
        """Studies with spooled instances that have been quiet long enough (or waited too long)."""
        now = time.time()
        with self._lock:
            rows = self._db.execute(
                "SELECT study_key, MAX(received_at), MIN(received_at) FROM instances"
                " WHERE state='spooled' OR (state='uploaded' AND batch_id IS NULL)"
                " GROUP BY study_key"
            ).fetchall()
        return [
            key
            for key, last, first in rows
            if now - last >= quiet_seconds or now - first >= max_wait_seconds
        ]

    def open_batch(self, study_key: str) -> str | None:
        """Assign a study's spooled instances to a new batch; returns its id (None if none).

        A batch is an amendment when the study already has an earlier batch, published or not:
        only the first batch of a study ever announces it as new.
        """
        batch_id = uuid.uuid4().hex
        with self._tx() as db:
            earlier = db.execute(
                "SELECT 1 FROM batches WHERE study_key=? LIMIT 1", (study_key,)
            ).fetchone()
            announced = db.execute(
                "SELECT announced FROM studies WHERE study_key=?", (study_key,)
            ).fetchone()
            cur = db.execute(  # an instance uploaded already keeps its state
                "UPDATE instances SET batch_id=?,"
                " state=CASE state WHEN 'spooled' THEN 'batched' ELSE state END"
                " WHERE study_key=? AND batch_id IS NULL AND state IN ('spooled','uploaded')",
                (batch_id, study_key),
            )
            if cur.rowcount == 0:
                return None
            amendment = bool(earlier) or bool(announced and announced[0])
            db.execute(
                "INSERT INTO batches (batch_id, study_key, created_at, amendment) VALUES (?,?,?,?)",
                (batch_id, study_key, time.time(), int(amendment)),
            )
        return batch_id

    def open_batches(self) -> list[tuple[str, str, bool]]:
        """(batch_id, study_key, amendment) of every batch not yet announced, oldest first."""
        with self._lock:
            rows = self._db.execute(OPEN_BATCHES).fetchall()
        return [(b, s, bool(a)) for b, s, a in rows]

    def batch_instances(self, batch_id: str) -> list[tuple[SpooledInstance, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, study_key, instance_key, sha256, size, path, modality, received_at,"
                " calling_ae, move_originator, acquired_days, state FROM instances"
                " WHERE batch_id=? AND state<>'lost' ORDER BY id",
                (batch_id,),
            ).fetchall()
        return [
            (
                SpooledInstance(
                    r[0], r[1], r[2], r[3], r[4], Path(r[5]), r[6], r[7], r[8], r[9], r[10]
                ),
                r[11],
            )
            for r in rows
        ]

    def batch_waiting(self, batch_id: str) -> bool:
        """Whether an instance of the batch still awaits upload (one indexed probe: the relay
        asks every poll, and reads the batch's rows only once they are all uploaded)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM instances WHERE batch_id=? AND state='batched' LIMIT 1",
                (batch_id,),
            ).fetchone()
        return row is not None

    def awaiting_upload(self, limit: int) -> list[tuple[int, str, str, str, Path]]:
        """(id, study_key, instance_key, sha256, path) of the oldest instances not yet in
        quarantine, batched or not: the relay uploads them while their study is still arriving."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, study_key, instance_key, sha256, path FROM instances"
                " WHERE state IN ('spooled','batched') ORDER BY received_at, id LIMIT ?",
                (limit,),
            ).fetchall()
        return [(r[0], r[1], r[2], r[3], Path(r[4])) for r in rows]

    def upload_backlog(self) -> tuple[int, int, float | None]:
        """(instances, bytes, oldest received_at) on disk and not yet in quarantine."""
        with self._lock:
            files, size, oldest = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(received_at) FROM instances"
                " WHERE state IN ('spooled','batched')"
            ).fetchone()
        return int(files), int(size), oldest

    def mark_uploaded(self, instance_ids: list[int]) -> None:
        """Record instances as in quarantine (whether or not their batch was opened since)."""
        if not instance_ids:
            return
        with self._tx() as db:
            db.executemany(
                "UPDATE instances SET state='uploaded'"
                " WHERE id=? AND state IN ('spooled','batched')",
                [(i,) for i in instance_ids],
            )

    def mark_published(self, batch_id: str, study_key: str) -> list[Path]:
        """Record the batch as announced; returns the spool files that may now be deleted."""
        with self._tx() as db:
            db.execute("UPDATE batches SET state='published' WHERE batch_id=?", (batch_id,))
            db.execute("UPDATE studies SET announced=1 WHERE study_key=?", (study_key,))
            rows = db.execute(
                "SELECT path, size FROM instances WHERE batch_id=? AND state IN (?,?,?)",
                (batch_id, *PENDING),
            ).fetchall()
            db.execute(
                "UPDATE instances SET state='published' WHERE batch_id=? AND state IN (?,?,?)",
                (batch_id, *PENDING),
            )
            db.execute(
                "UPDATE totals SET files=files-?, bytes=bytes-? WHERE id=1",
                (len(rows), sum(r[1] for r in rows)),
            )
        return [Path(r[0]) for r in rows]

    def forget_study_dir(self, study_key: str) -> None:
        """Remove a study's spool directory if it is empty (its last batch was published)."""
        self._study_dirs.discard(study_key)
        try:
            (self.files / study_key).rmdir()
        except OSError:
            pass  # more instances of the study are still in the spool

    # --- retention (relay thread) --------------------------------------------------------
    def prune(self, window_seconds: float, *, now: float | None = None, chunk: int = 500) -> int:
        """Forget published instances received more than ``window_seconds`` ago whose spool
        file is gone, in transactions of at most ``chunk`` rows (intake is never held up for
        long); then their batches and studies once nothing of them is left. Returns the
        instance rows deleted. Within the window a resend is still a duplicate; after it, the
        same bytes are stored and announced again (as a new study if nothing of it is left).
        """
        cutoff = (time.time() if now is None else now) - window_seconds
        pruned = 0
        while True:
            with self._lock:  # a read first: no write lock taken when there is nothing to do
                rows = self._db.execute(
                    "SELECT id, path, batch_id, study_key FROM instances"
                    " WHERE state='published' AND received_at<? ORDER BY received_at LIMIT ?",
                    (cutoff, chunk),
                ).fetchall()
            # a file still there (a crash between commit and unlink) keeps its row: recovery
            # must still know it was published, or it would adopt it as new
            gone = [r for r in rows if not os.path.exists(r[1])]
            if gone:
                with self._tx() as db:
                    db.executemany(
                        "DELETE FROM instances WHERE id=? AND state='published'",
                        [(r[0],) for r in gone],
                    )
                    for batch_id in {r[2] for r in gone if r[2]}:
                        db.execute(
                            "DELETE FROM batches WHERE batch_id=? AND state='published' AND NOT"
                            " EXISTS (SELECT 1 FROM instances WHERE batch_id=?)",
                            (batch_id, batch_id),
                        )
                    for study_key in {r[3] for r in gone}:
                        left = db.execute(
                            "SELECT 1 FROM instances WHERE study_key=? AND state IN"
                            " ('spooled','batched','uploaded','published','lost') LIMIT 1",
                            (study_key,),
                        ).fetchone()
                        if left is None:
                            db.execute("DELETE FROM batches WHERE study_key=?", (study_key,))
                            db.execute("DELETE FROM studies WHERE study_key=?", (study_key,))
                pruned += len(gone)
            if len(rows) < chunk or not gone:
                return pruned

    def pending_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT bytes FROM totals WHERE id=1").fetchone()[0])

    # --- gauges -------------------------------------------------------------------------
    def pending_stats(self) -> tuple[int, int, float | None]:
        """(files, bytes, oldest received_at) of instances not yet published."""
        with self._lock:
            files, size = self._db.execute("SELECT files, bytes FROM totals WHERE id=1").fetchone()
            oldest = min(
                (
                    r[0]
                    for state in PENDING
                    for r in self._db.execute(
                        "SELECT MIN(received_at) FROM instances WHERE state=?", (state,)
                    )
                    if r[0] is not None
                ),
                default=None,
            )
        return int(files), int(size), oldest

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._writers.close()
