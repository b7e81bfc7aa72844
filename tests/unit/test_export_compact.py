"""Done records and receipts are compacted per trust and day (their count stops growing per
study), and reconcile, report and withdraw give the same answers from the archive."""

from __future__ import annotations

import os
import time
from datetime import date, timedelta
from pathlib import Path
from unittest import mock
from zoneinfo import ZoneInfo

from helpers.export import ExportRig, patient_of, stage_study
from prometheus_client import REGISTRY

from consumers.export_policy import ExportPolicy
from consumers.reconcile import reconcile
from consumers.withdraw import withdraw
from smartbox import layout
from smartbox.report_records import read_records
from smartbox.retention import purge_quarantine, purge_staging
from smartbox.store import LocalStore, get_json, put_json

DAY = 86400.0
UTC = ZoneInfo("UTC")


def quarantine_batch(store: LocalStore, trust: str, batch_id: str) -> None:
    key = layout.quarantine_instance_key(trust, batch_id[::-1], "1" * 32, "0" * 64)
    store.put_bytes("quarantine", key, b"DICM identifiable")
    manifest = layout.quarantine_batch_key(trust, batch_id[::-1], batch_id)
    put_json(store, "quarantine", manifest, {"instances": [{"key": key}]})


def keys(store: LocalStore, prefix: str) -> list[str]:
    return list(store.list_keys("staging", prefix))


def answers(rig: ExportRig) -> tuple[list[tuple[str, dict[str, int], int]], list[tuple]]:
    """What ``smartbox reconcile`` and ``smartbox report`` say about RTK."""
    today = date.today()
    lines = reconcile(
        rig.exporter.state,
        "RTK",
        today - timedelta(days=15),
        today,
        max_age_seconds=2 * DAY,
    )
    recs = read_records(rig.store, quarantine="quarantine", staging="staging", code="RTK", tz=UTC)
    exports = sorted(
        (e.batch_id, e.state, e.instances, e.sent_day, e.acked_day) for e in recs.exports
    )
    return [(ln.day, dict(ln.counts), ln.overdue) for ln in lines], exports


def compacted() -> float:
    labels = {"bucket": "staging", "why": "compacted"}
    return REGISTRY.get_sample_value("smartbox_retention_deleted_objects_total", labels) or 0.0


def test_done_records_and_receipts_compacted_per_day_same_answers(tmp_path: Path) -> None:
    policy = ExportPolicy(window_end=None, max_attempts=10)
    rig = ExportRig(LocalStore(tmp_path / "l"), LocalStore(tmp_path / "n"), policy)
    rig.store.ensure_bucket("quarantine")
    real = time.time
    ten_days_ago = real() - 10 * DAY
    with mock.patch("time.time", lambda: ten_days_ago):
        acked = [stage_study(rig.store, "RTK", n, patient=patient_of(n)) for n in (1, 2)]
        held = stage_study(rig.store, "RTK", 3, instances=0)  # every instance held back
        bad = stage_study(rig.store, "RTK", 4)  # an object lost in staging: stays outstanding
        for m in [*acked, held, bad]:
            quarantine_batch(rig.store, "RTK", m["body"]["batch_id"])
            rig.exporter.handle(m)
        lost = get_json(rig.store, "staging", bad["body"]["manifest_key"])["instances"][0]
        rig.store.delete("staging", lost["key"])
        rig.window()
    for key in keys(rig.store, layout.receipts_prefix("RTK")):  # written ten days ago
        os.utime(tmp_path / "l" / "staging" / key, (ten_days_ago, ten_days_ago))
    purge_quarantine(
        rig.store, quarantine="quarantine", staging="staging", older_than_seconds=7 * DAY
    )
    purge_staging(rig.store, staging="staging", grace_seconds=7 * DAY)
    before = answers(rig)
    assert [c for _d, c, _o in before[0]] == [{"acked": 2, "held": 1, "queued": 1}]
    assert len(keys(rig.store, "_export/studies/RTK/")) == 4
    counted = compacted()

    rig.window()  # the next pass compacts what retention is done with
    day = layout.day_of(ten_days_ago)
    bad_id = bad["body"]["batch_id"]
    assert keys(rig.store, "_export/studies/RTK/") == [layout.record_key("RTK", bad_id)]
    assert keys(rig.store, layout.days_prefix("RTK")) == [layout.day_key("RTK", day, bad_id)]
    assert keys(rig.store, layout.receipts_prefix("RTK")) == []
    assert keys(rig.store, layout.archive_prefix("RTK")) == [
        layout.archived_receipts_key("RTK", day),
        layout.archived_records_key("RTK", day),
    ]
    [receipt] = get_json(rig.store, "staging", layout.archived_receipts_key("RTK", day))[
        "receipts"
    ].values()
    assert {s["export_id"] for s in receipt["studies"]} == {m["body"]["batch_id"] for m in acked}
    assert answers(rig) == before  # reconcile and report: the same answers
    assert compacted() == counted + 3 * 2 + 1  # records and day markers, and the receipt

    rig.window()  # again: nothing more to do, nothing counted twice
    assert answers(rig) == before and compacted() == counted + 7

    # a record in both places (a compaction interrupted after its archive write) counts once
    archived = rig.exporter.state.archived("RTK", day)
    first = acked[0]["body"]["batch_id"]
    put_json(rig.store, "staging", layout.record_key("RTK", first), archived[first])
    assert answers(rig) == before

    # withdrawals still find an exported study whose record is in the archive
    report = withdraw(rig.store, "staging", "RTK", patient_of(2))
    assert report.queued_for_national == [acked[1]["body"]["batch_id"]]
    assert rig.store.exists(
        "staging", layout.withdrawal_outbox_key("RTK", report.queued_for_national[0])
    )


def test_nothing_young_or_unfinished_is_compacted(tmp_path: Path) -> None:
    """Done today, or acknowledged long ago but not yet purged by retention: still its own
    record."""
    rig = ExportRig(LocalStore(tmp_path / "l"), LocalStore(tmp_path / "n"))
    rig.store.ensure_bucket("quarantine")
    old = time.time() - 10 * DAY
    with mock.patch("time.time", lambda: old):
        unpurged = stage_study(rig.store, "RTK", 5)  # acknowledged, retention not run yet
        rig.exporter.handle(unpurged)
        rig.window()
    today = stage_study(rig.store, "RTK", 6, instances=0)  # held: done once purged
    quarantine_batch(rig.store, "RTK", today["body"]["batch_id"])
    rig.exporter.handle(today)
    rig.window()
    purge_quarantine(
        rig.store,
        quarantine="quarantine",
        staging="staging",
        older_than_seconds=0,
        now=old + 20 * DAY,
    )
    rig.window()
    assert len(keys(rig.store, "_export/studies/RTK/")) == 2
    assert keys(rig.store, layout.archive_prefix("RTK")) == []
