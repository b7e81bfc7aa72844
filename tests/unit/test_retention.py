"""Retention: originals go only after national acknowledgement plus grace; never unprocessed."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from helpers.export import ExportRig, stage_study
from helpers.util import wait_for

from smartbox import layout, metrics
from smartbox.retention import purge_quarantine, purge_staging
from smartbox.store import LocalStore, get_json, put_json

DAY = 86400.0


def quarantine_batch(store: LocalStore, trust: str, batch_id: str) -> list[str]:
    study_key = batch_id[::-1]
    keys = [
        layout.quarantine_instance_key(trust, study_key, f"{i:032x}", "0" * 64) for i in range(3)
    ]
    for k in keys:
        store.put_bytes("quarantine", k, b"DICM identifiable")
    manifest = layout.quarantine_batch_key(trust, study_key, batch_id)
    put_json(store, "quarantine", manifest, {"instances": [{"key": k} for k in keys]})
    return [*keys, manifest]


def test_only_acknowledged_originals_go_after_grace_unprocessed_never(tmp_path: Path) -> None:
    rig = ExportRig(LocalStore(tmp_path / "l"), LocalStore(tmp_path / "n"))
    rig.store.ensure_bucket("quarantine")
    acked_msg = stage_study(rig.store, "RTK", 1)
    acked = quarantine_batch(rig.store, "RTK", acked_msg["body"]["batch_id"])
    rig.exporter.handle(acked_msg)
    rig.window()
    pending_msg = stage_study(rig.store, "RTK", 2)  # staged, not yet exported
    pending = quarantine_batch(rig.store, "RTK", pending_msg["body"]["batch_id"])
    rig.exporter.handle(pending_msg)
    unprocessed = quarantine_batch(rig.store, "RTK", "c" * 32)  # the anonymiser never saw it
    everything = acked + pending + unprocessed

    def purge(days: float, dry: bool = False):  # type: ignore[no-untyped-def]
        return purge_quarantine(
            rig.store,
            quarantine="quarantine",
            staging="staging",
            older_than_seconds=7 * DAY,
            dry_run=dry,
            now=time.time() + days * DAY,
        )

    young = purge(1)
    assert (young.purged_batches, young.kept_young, young.kept_unacknowledged) == (0, 1, 1)
    assert all(rig.store.exists("quarantine", k) for k in everything)
    assert purge(8, dry=True).purged_objects == 3 and rig.store.exists("quarantine", acked[0])
    report = purge(40)
    assert (report.purged_batches, report.purged_objects) == (1, 3)
    assert report.unprocessed_old == [unprocessed[-1]]
    assert not any(rig.store.exists("quarantine", k) for k in acked)
    assert all(rig.store.exists("quarantine", k) for k in pending + unprocessed)

    staged_acked = [
        i["key"]
        for i in get_json(rig.store, "staging", acked_msg["body"]["manifest_key"])["instances"]
    ]  # noqa: E501
    staged_pending = [
        i["key"]
        for i in get_json(rig.store, "staging", pending_msg["body"]["manifest_key"])["instances"]
    ]  # noqa: E501
    assert purge_staging(rig.store, staging="staging", grace_seconds=7 * DAY) == 0
    assert (
        purge_staging(
            rig.store, staging="staging", grace_seconds=7 * DAY, now=time.time() + 8 * DAY
        )
        == 3
    )  # noqa: E501
    assert not any(rig.store.exists("staging", k) for k in staged_acked)
    assert all(rig.store.exists("staging", k) for k in staged_pending)
    assert rig.store.exists("staging", acked_msg["body"]["manifest_key"])  # kept for audit


def test_compose_sets_no_lifecycle_rule_on_quarantine() -> None:
    compose = Path(__file__).parents[2] / "deploy" / "compose" / "docker-compose.yml"
    assert "ilm rule add" not in compose.read_text()


def test_the_exporter_daemon_sets_the_unprocessed_quarantine_gauge(tmp_path: Path) -> None:
    """Not only the one-shot purge: the long-running exporter (scraped by Prometheus) counts
    quarantine batches past the alert age that were never processed, on its schedule."""
    from prometheus_client import REGISTRY

    from consumers.exporter import Schedule, run_scheduler

    rig = ExportRig(LocalStore(tmp_path / "l"), LocalStore(tmp_path / "n"))
    rig.store.ensure_bucket("quarantine")
    done = stage_study(rig.store, "RTK", 1)
    processed = quarantine_batch(rig.store, "RTK", done["body"]["batch_id"])
    rig.exporter.handle(done)  # processed: it has an export record
    forgotten = quarantine_batch(rig.store, "RTK", "d" * 32)  # never processed, 40 days old
    quarantine_batch(rig.store, "RTK", "e" * 32)  # never processed yet, but it just arrived
    long_ago = time.time() - 40 * DAY
    for key in [*forgotten, *processed]:
        os.utime(tmp_path / "l" / "quarantine" / key, (long_ago, long_ago))
    rig.exporter.quarantine = "quarantine"
    metrics.QUARANTINE_UNPROCESSED_OLD.set(-1)  # whatever an earlier test left
    stop = threading.Event()
    daemon = threading.Thread(
        target=run_scheduler, args=(rig.exporter, Schedule("0 1 1 1 *", "UTC"), stop)
    )
    daemon.start()
    try:
        wait_for(
            lambda: REGISTRY.get_sample_value("smartbox_quarantine_unprocessed_old_batches") == 1,
            10,
            "the gauge set by the daemon",
        )
    finally:
        stop.set()
        daemon.join(10)
    assert all(rig.store.exists("quarantine", k) for k in forgotten)  # counted, never deleted
