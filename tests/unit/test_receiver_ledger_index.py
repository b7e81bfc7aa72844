"""The ledger's batch state is indexed: the relay's ``open_batches`` reads only open batches.

Without the index SQLite scanned every batch the ledger remembers (``ledger_retention_days``
of them) and sorted them, once per relay cycle. The index is created when a spool is opened,
so a ledger written before it existed gets it too (the migration)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from producers.receiver.spool import OPEN_BATCHES, Spool


def old_ledger(root: Path, published: int, open_: int) -> None:
    """A ledger as receivers before the index wrote it: the batches table, no batches_open."""
    root.mkdir(parents=True)
    db = sqlite3.connect(root / "ledger.sqlite3")
    db.execute(
        "CREATE TABLE batches (batch_id TEXT PRIMARY KEY, study_key TEXT NOT NULL,"
        " created_at REAL NOT NULL, amendment INTEGER NOT NULL, state TEXT NOT NULL"
        " DEFAULT 'open')"
    )
    db.execute("CREATE INDEX batches_study ON batches (study_key)")
    now = time.time()
    rows = [(f"p{i}", f"s{i}", now - 10_000 + i, 0, "published") for i in range(published)]
    # open batches created out of order, to see that the order comes from created_at
    rows += [(f"o{i}", f"t{i}", now - i, i % 2, "open") for i in range(open_)]
    db.executemany("INSERT INTO batches VALUES (?,?,?,?,?)", rows)
    db.commit()
    db.close()


def plan(root: Path) -> list[str]:
    db = sqlite3.connect(root / "ledger.sqlite3")
    try:
        return [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + OPEN_BATCHES)]
    finally:
        db.close()


def test_open_batches_uses_the_index_on_an_existing_ledger(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    old_ledger(root, published=5000, open_=3)
    before = plan(root)
    assert any(step.startswith("SCAN batches") for step in before), before  # the full scan
    spool = Spool(root)
    try:
        assert spool.open_batches() == [
            ("o2", "t2", False),
            ("o1", "t1", True),
            ("o0", "t0", False),
        ]
    finally:
        spool.close()
    after = plan(root)
    assert after == ["SCAN batches USING INDEX batches_open"], after  # no temp b-tree sort
    db = sqlite3.connect(root / "ledger.sqlite3")
    try:
        (entries,) = db.execute(
            "SELECT COUNT(*) FROM batches INDEXED BY batches_open WHERE state='open'"
        ).fetchone()
    finally:
        db.close()
    assert entries == 3


def test_a_new_ledger_has_the_index_and_a_published_batch_leaves_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    try:
        batch = spool._db  # noqa: SLF001 - the plan is what this test is about
        names = {r[0] for r in batch.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "batches_open" in names
        batch.execute(
            "INSERT INTO batches (batch_id, study_key, created_at, amendment) VALUES ('b','s',1,0)"
        )
        assert spool.open_batches() == [("b", "s", False)]
        spool.mark_published("b", "s")
        assert spool.open_batches() == []
    finally:
        spool.close()
    assert plan(tmp_path / "spool") == ["SCAN batches USING INDEX batches_open"]
