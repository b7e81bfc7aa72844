"""The ledger's writer lock excludes other processes, and is free again once released."""

from __future__ import annotations

import fcntl
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from smartbox.sqlite import WriterLock, immediate


def _hold(path: str, held, release) -> None:  # noqa: ANN001 - multiprocessing events
    with WriterLock(Path(path)):
        held.set()
        release.wait(30)


def _try(lock: WriterLock) -> bool:
    try:
        fcntl.flock(lock._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(lock._file.fileno(), fcntl.LOCK_UN)
    return True


def test_another_process_holding_the_lock_excludes_us_until_it_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "ledger.lock"
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(str(path), held, release))
    child.start()
    try:
        assert held.wait(30)
        ours = WriterLock(path)
        assert not _try(ours), "held by the other process"
        release.set()
        child.join(30)
        assert _try(ours), "free once it let go"
        ours.close()
    finally:
        release.set()
        child.join(5)


def test_a_transaction_that_raises_rolls_back_and_frees_the_lock(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "t.db", isolation_level=None, check_same_thread=False)
    db.execute("CREATE TABLE t (x)")
    lock, writers = threading.RLock(), WriterLock(tmp_path / "ledger.lock")
    with pytest.raises(RuntimeError), immediate(db, lock, writers):
        db.execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("boom")
    assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
    assert _try(WriterLock(tmp_path / "ledger.lock")), "the lock is not left held"
    with immediate(db, lock, writers):
        db.execute("INSERT INTO t VALUES (2)")
    assert db.execute("SELECT x FROM t").fetchall() == [(2,)]
