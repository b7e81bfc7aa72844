"""What the receiver remembers, and for how long: the quarantine batch manifest says which
calling AE sent a study and how old it was on arrival (the export's backfill or prospective),
and the SQLite ledger is pruned after ``ledger_retention_days`` without forgetting a resend
within that window."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from helpers.receiver_env import CALLER, LocalReceiver, make_trust, send_files
from helpers.util import wait_for
from prometheus_client import REGISTRY

import schemas
from smartbox.synthetic import make_ct_study

DAY = 86400.0


def dated(seed: int, acquired: date, out: Path, n: int = 3) -> list[Path]:
    study = make_ct_study(seed, series=1, per_series=n)
    for ds in study.datasets:
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = acquired.strftime("%Y%m%d")
        ds.AcquisitionDate = acquired.strftime("%Y%m%d")
    return study.write(out)


def manifests(r: LocalReceiver) -> list[dict]:
    out = []
    for m in r.arrived():
        doc = json.loads(r.store.get_bytes("quarantine", m["body"]["batch_key"]))
        schemas.validate_document("quarantine.batch", doc)
        out.append(doc)
    return out


def test_manifest_names_the_calling_ae_and_the_age_of_the_study_on_arrival(
    tmp_path: Path,
) -> None:
    trust = make_trust(allowed_callers=(CALLER, "ARCHIVE_AE"), quiet_seconds=0.3)
    r = LocalReceiver(trust, tmp_path / "rx")
    try:
        today = date.today()
        daily = dated(61, today, tmp_path / "daily")
        old = dated(62, today - timedelta(days=400), tmp_path / "old")
        assert send_files(r.host, r.port, trust.ae_title, daily).statuses == [0] * 3
        assert (
            send_files(r.host, r.port, trust.ae_title, old, calling="ARCHIVE_AE").statuses
            == [0] * 3
        )
        wait_for(lambda: len(r.arrived()) == 2, 30, "two studies announced")
        got = sorted(
            (tuple(m["calling_aes"]), m["acquired_days_before_arrival"]) for m in manifests(r)
        )
        assert got == [(("ARCHIVE_AE",), 400), ((CALLER,), 0)]
        # read from the header at intake and kept as days: the relay read no file for them
        db = sqlite3.connect(r.service.spool.root / "ledger.sqlite3")
        try:
            days = sorted(row[0] for row in db.execute("SELECT acquired_days FROM instances"))
        finally:
            db.close()
        assert days == [0, 0, 0, 400, 400, 400]
    finally:
        r.close()


def ledger_rows(r: LocalReceiver) -> int:
    db = sqlite3.connect(r.service.spool.root / "ledger.sqlite3")
    try:
        return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
    finally:
        db.close()


def pruned(code: str) -> float:
    return REGISTRY.get_sample_value("smartbox_receiver_ledger_pruned_total", {"trust": code}) or 0


def test_a_resend_within_the_window_is_a_duplicate_after_it_is_stored_again(
    tmp_path: Path,
) -> None:
    trust = make_trust(quiet_seconds=0.3, ledger_retention_days=30)
    r = LocalReceiver(trust, tmp_path / "rx")
    spool, relay = r.service.spool, r.service.relay
    try:
        files = dated(63, date.today(), tmp_path / "send")
        assert send_files(r.host, r.port, trust.ae_title, files).statuses == [0] * 3
        wait_for(lambda: len(r.arrived()) == 1, 30, "announced")
        wait_for(lambda: spool.pending_stats()[0] == 0, 30, "published, spool files gone")

        assert relay.prune_ledger(now=time.time() + 29 * DAY) == 0  # still inside the window
        assert send_files(r.host, r.port, trust.ae_title, files).statuses == [0] * 3
        assert spool.pending_stats()[0] == 0 and ledger_rows(r) == 3  # duplicates: not stored

        before = pruned(trust.code)
        assert relay.prune_ledger(now=time.time() + 31 * DAY) == 3  # past it: forgotten
        assert ledger_rows(r) == 0 and pruned(trust.code) == before + 3
        assert send_files(r.host, r.port, trust.ae_title, files).statuses == [0] * 3
        wait_for(lambda: len(r.arrived()) == 2, 30, "the late resend stored and announced")
        assert r.arrived()[1]["body"]["instance_count"] == 3
    finally:
        r.close()


def test_the_relay_prunes_the_ledger_on_its_own_thread(tmp_path: Path) -> None:
    trust = make_trust(quiet_seconds=0.3, ledger_retention_days=1)
    r = LocalReceiver(trust, tmp_path / "rx")
    try:
        files = dated(64, date.today(), tmp_path / "send")
        assert send_files(r.host, r.port, trust.ae_title, files).statuses == [0] * 3
        wait_for(lambda: len(r.arrived()) == 1, 30, "announced")
        wait_for(lambda: r.service.spool.pending_stats()[0] == 0, 30, "published")
        db = sqlite3.connect(r.service.spool.root / "ledger.sqlite3")
        db.execute("UPDATE instances SET received_at = received_at - 2 * 86400")  # two days on
        db.commit()
        db.close()
        r.service.relay.next_prune_at = 0.0  # its next periodic prune, now
        wait_for(lambda: ledger_rows(r) == 0, 30, "pruned by the relay")
    finally:
        r.close()


def test_a_batch_manifest_that_would_break_its_schema_is_never_written(tmp_path: Path) -> None:
    from producers.receiver import Spool
    from producers.receiver.relay import Relay
    from smartbox.bus import MemoryBus
    from smartbox.errors import PermanentError
    from smartbox.store import LocalStore

    trust = make_trust(quiet_seconds=0)
    spool = Spool(tmp_path / "spool")
    [path] = dated(65, date.today(), tmp_path / "send", n=1)
    tmp = spool.tmp / "x.dcm"
    tmp.write_bytes(path.read_bytes())
    spool.accept(  # a ledger row no intake path writes: a modality outside the vocabulary
        tmp,
        study_key="a" * 32,
        instance_key="b" * 32,
        sha256="c" * 64,
        size=tmp.stat().st_size,
        modality="not a modality",
        high_water=2**40,
    )
    store, bus = LocalStore(tmp_path / "objects"), MemoryBus()
    relay = Relay(trust, spool, store, bus, "quarantine")
    try:
        with pytest.raises(PermanentError, match="quarantine.batch"):
            relay.step()
        assert [k for k in store.list_keys("quarantine") if "/batches/" in k] == []
        assert bus.depth(bus.topology.queue("anonymiser")) == 0
    finally:
        relay._uploads.shutdown()
        spool.close()
