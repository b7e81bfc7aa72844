"""SQLite transactions as the box's local databases use them (the receiver's ledger, the
cohort state): one connection shared by a process's threads under a lock, every write in
``BEGIN IMMEDIATE`` so that writers of other processes wait (busy timeout) instead of failing
at commit."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def immediate(db: sqlite3.Connection, lock: threading.RLock) -> Iterator[sqlite3.Connection]:
    """A write transaction on ``db``: committed when the block ends, rolled back if it raises."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
