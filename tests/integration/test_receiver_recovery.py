"""Restart recovery of the spool: what a crash (or a power cut) can leave behind, and what the
receiver does with it at start-up before it accepts anything."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from helpers.receiver_env import LocalReceiver, make_trust, send_files
from helpers.util import wait_for

from producers.receiver import Spool
from smartbox.synthetic import make_ct_study


def test_recovery_adopts_lost_rows_and_clears_what_was_never_acknowledged(tmp_path: Path) -> None:
    files = make_ct_study(51, series=1, per_series=4).write(tmp_path / "send")
    trust = make_trust(quiet_seconds=3600, max_wait_seconds=3600)
    r = LocalReceiver(trust, tmp_path / "rx")
    assert send_files(r.host, r.port, trust.ae_title, files).statuses == [0] * 4
    r.close()
    root = tmp_path / "rx" / "spool" / trust.code
    # a power cut took the last ledger rows (intake commits are not fsync'd) ...
    db = sqlite3.connect(root / "ledger.sqlite3")
    lost_rows = db.execute("SELECT path FROM instances ORDER BY id DESC LIMIT 2").fetchall()
    db.execute("DELETE FROM instances WHERE path IN (?, ?)", [p for (p,) in lost_rows])
    db.execute("UPDATE totals SET files=files-2")
    db.commit()
    db.close()
    # ... a dataset was half received, and one instance was never acknowledged
    (root / "tmp" / "tmpabc.dcm").write_bytes(b"half a dataset")
    study_dir = Path(lost_rows[0][0]).parent
    (study_dir / f"{'0' * 32}-{'0' * 16}.dcm").write_bytes(b"not what its name says")

    spool = Spool(root)
    assert spool.recover() == (2, 2, 0)  # removed, adopted, lost
    assert spool.pending_stats()[0] == 4
    spool.close()

    r = LocalReceiver(make_trust(trust.code, quiet_seconds=0.2), tmp_path / "rx")
    try:
        wait_for(lambda: r.arrived_count() == 4, 30, "all four announced after the restart")
        assert len(r.quarantine()) == 4
        assert send_files(r.host, r.port, trust.ae_title, files).statuses == [0] * 4
        assert r.metric("smartbox_duplicate_instances_total", kind="identical") == 4
    finally:
        r.close()


def test_a_vanished_file_is_counted_as_lost_not_announced(tmp_path: Path) -> None:
    files = make_ct_study(52, series=1, per_series=3).write(tmp_path / "send")
    trust = make_trust(quiet_seconds=3600, max_wait_seconds=3600)
    r = LocalReceiver(trust, tmp_path / "rx")
    assert send_files(r.host, r.port, trust.ae_title, files).statuses == [0] * 3
    r.close()
    victim = next((tmp_path / "rx" / "spool" / trust.code / "instances").glob("*/*.dcm"))
    victim.unlink()

    r = LocalReceiver(make_trust(trust.code, quiet_seconds=0.2), tmp_path / "rx")
    try:
        wait_for(lambda: r.arrived_count() == 2, 30, "the two remaining announced")
        assert r.metric("smartbox_failures_total", stage="receive", kind="spool_file_lost") == 1
        assert r.service.spool.pending_stats()[:2] == (0, 0)
    finally:
        r.close()
