"""Exporter logic on the in-memory twins: pending state in object storage, per-trust passes."""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import schemas
from consumers.exporter import DONE, PENDING, Exporter, Schedule
from smartbox.bus import MemoryBus
from smartbox.errors import TransientError
from smartbox.store import LocalStore, get_json, put_json

LONDON = ZoneInfo("Europe/London")


def staged(store: LocalStore, trust: str, n: int, batch: str) -> dict:
    uid = f"2.25.{n}"
    instances = []
    for i in range(n):
        data = f"{trust}-{n}-{i}".encode() * 100
        key = f"{trust}/{uid}/2.25.{n}{i}-{hashlib.sha256(data).hexdigest()[:16]}.dcm"
        store.put_bytes("staging", key, data)
        instances.append(
            {
                "key": key,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "study_uid": uid,
                "modality": "CT",
            }
        )
    manifest_key = f"{trust}/{uid}/manifest-{batch}.json"
    put_json(store, "staging", manifest_key, {"instances": instances})
    return schemas.make_message(
        "study.staged",
        trust=trust,
        producer="anonymiser@test",
        body={
            "study_key": "a" * 32,
            "batch_id": batch,
            "study_uid": uid,
            "bucket": "staging",
            "manifest_key": manifest_key,
            "instances_in": n,
            "instances_staged": n,
            "instances_held_back": 0,
            "held_back_reasons": {},
            "bytes_staged": 1,
            "amendment": False,
        },
    )


class FlakyStore(LocalStore):
    """A national destination that refuses one trust's objects."""

    def __init__(self, root: Path, refuse: str) -> None:
        super().__init__(root)
        self.refuse = refuse

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        if key.startswith(f"{self.refuse}/"):
            raise TransientError("national destination unavailable")
        super().put_bytes(bucket, key, data)


def test_pending_then_export_per_trust(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "local")
    store.ensure_bucket("staging")
    national = FlakyStore(tmp_path / "national", refuse="RGT")
    bus = MemoryBus()
    exporter = Exporter(store, national, bus)
    for msg in (
        staged(store, "RTK", 3, "1" * 32),
        staged(store, "RTK", 2, "2" * 32),
        staged(store, "RGT", 4, "3" * 32),
    ):
        exporter.handle(msg)
        schemas.validate(msg)
    assert len(list(store.list_keys("staging", PENDING))) == 3

    summary = exporter.export_pass()
    assert summary.instances == {"RTK": 5}
    assert summary.failed_trusts == ["RGT"]
    # RTK exported: objects, manifest and one export.batch; its records moved to done
    batches = [m for m, _ in bus.messages(bus.topology.queue("national.ingest"))]
    assert [(b["trust"], b["body"]["instance_count"]) for b in batches] == [("RTK", 5)]
    manifest = national.get_bytes("national", batches[0]["body"]["manifest_key"])
    assert hashlib.sha256(manifest).hexdigest() == batches[0]["body"]["manifest_sha256"]
    assert len(batches[0]["parent_ids"]) == 2
    assert len([k for k in national.list_keys("national", "RTK/")]) == 5
    assert list(store.list_keys("staging", f"{PENDING}RTK/")) == []
    assert len(list(store.list_keys("staging", DONE))) == 2
    # RGT stays pending, and goes out on the next pass once the destination is back
    assert len(list(store.list_keys("staging", f"{PENDING}RGT/"))) == 1
    national.refuse = "NONE"
    again = exporter.export_pass()
    assert again.instances == {"RGT": 4} and not again.failed_trusts
    assert get_json(store, "staging", "_export/last_success.json")["batches"].keys() == {"RGT"}


def test_empty_pass_publishes_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.ensure_bucket("staging")
    bus = MemoryBus()
    summary = Exporter(store, LocalStore(tmp_path / "n"), bus).export_pass()
    assert summary.total_instances == 0 and summary.batches == {}
    assert bus.depth(bus.topology.queue("national.ingest")) == 0


def test_schedule_is_nightly_in_london_across_clock_changes() -> None:
    schedule = Schedule("0 1 * * *", "Europe/London")
    # the night the clocks go back (26 Oct 2025): 01:00 happens once in our schedule, BST
    before = datetime(2025, 10, 25, 23, 0, tzinfo=LONDON)
    nxt = schedule.next_after(before)
    assert (nxt.day, nxt.hour, nxt.minute) == (26, 1, 0)
    summer = schedule.next_after(datetime(2026, 7, 1, 12, 0, tzinfo=LONDON))
    assert (summer.day, summer.hour, summer.utcoffset().total_seconds()) == (2, 1, 3600)
    winter = schedule.next_after(datetime(2026, 1, 10, 2, 0, tzinfo=LONDON))
    assert (winter.day, winter.hour, winter.utcoffset().total_seconds()) == (11, 1, 0)
    with pytest.raises(ValueError):
        Schedule("every night", "Europe/London")
