"""SQLite transactions as the box's local databases use them (the receiver's ledger, the
cohort state): one connection shared by a process's threads under a lock, every write in
``BEGIN IMMEDIATE`` so that writers of other processes wait instead of failing at commit.

Writers of several processes (the receiver's SCP workers and its relay share one ledger) can
also queue on a ``WriterLock``: SQLite's own busy handler polls a locked database with sleeps
of 1, 2, 5, 10 ms and more, so under four associations nearly every intake commit slept a
millisecond or several (``strace``: ~one ``clock_nanosleep`` per instance, 2026-12-01), and
four associations received barely more than one. A waiter on the lock file is woken by the
kernel the moment the holder lets go."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path


class WriterLock:
    """An exclusive lock across processes: ``flock`` on ``path`` (made if missing). Not
    between threads of one process (they share the open file): take a thread lock first."""

    def __init__(self, path: Path) -> None:
        # a file object, not a bare descriptor: closed with it if its owner is never closed
        self._file = open(  # noqa: SIM115 - lives as long as the lock
            os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), "rb", buffering=0
        )

    def __enter__(self) -> WriterLock:
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        self._file.close()


@contextmanager
def immediate(
    db: sqlite3.Connection, lock: threading.RLock, writers: WriterLock | None = None
) -> Iterator[sqlite3.Connection]:
    """A write transaction on ``db``: committed when the block ends, rolled back if it raises.
    With ``writers``, this process's turn among the database's writers is taken first."""
    across: AbstractContextManager[object] = writers if writers is not None else nullcontext()
    with lock, across:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
