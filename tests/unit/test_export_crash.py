"""A crash at any write of an export pass, then a restart: nothing exported twice, nothing lost.

The crash is injected at the k-th write (staging or national) for every k a clean pass makes;
from then on the "dead" process can write nothing (its lease is not released either, as after
SIGKILL). A new exporter on the same state finishes the work.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from helpers.export import ExportRig, stage_study

from consumers.export_policy import ExportPolicy
from smartbox.store import LocalStore, get_json


class Crash(BaseException):
    """The process died here (BaseException: no handler of ours catches it)."""


class Writes:
    def __init__(self, crash_at: int | None) -> None:
        self.count = 0
        self.crash_at = crash_at

    def tick(self) -> None:
        self.count += 1
        if self.crash_at is not None and self.count >= self.crash_at:
            raise Crash(self.count)


class CrashingStore(LocalStore):
    def __init__(self, root: Path, writes: Writes) -> None:
        super().__init__(root)
        self.writes = writes

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self.writes.tick()
        super().put_bytes(bucket, key, data)

    def put_stream(self, bucket: str, key: str, stream: Any, length: int) -> None:
        self.writes.tick()
        super().put_stream(bucket, key, stream, length)

    def put_new(self, bucket: str, key: str, data: bytes) -> bool:
        self.writes.tick()
        return super().put_new(bucket, key, data)

    def put_if_match(self, bucket: str, key: str, data: bytes, etag: str) -> bool:
        self.writes.tick()
        return super().put_if_match(bucket, key, data, etag)

    def delete(self, bucket: str, key: str) -> None:
        self.writes.tick()
        super().delete(bucket, key)


POLICY = ExportPolicy(window_end=None, max_batch_studies=2, lease_ttl_seconds=0.15)
STUDIES = [("RTK", 1), ("RTK", 2), ("RTK", 3), ("RGT", 4), ("RGT", 5)]


def staged_rig(tmp_path: Path, writes: Writes) -> tuple[ExportRig, int]:
    rig = ExportRig(
        CrashingStore(tmp_path / "local", writes), CrashingStore(tmp_path / "nat", writes), POLICY
    )
    instances = 0
    for code, n in STUDIES:
        rig.exporter.handle(stage_study(rig.store, code, n, instances=2))
        instances += 2
    return rig, instances


def writes_of_a_clean_pass(tmp_path: Path) -> int:
    writes = Writes(None)
    rig, _ = staged_rig(tmp_path, writes)
    before = writes.count
    rig.exporter.export_pass()
    return writes.count - before


def test_a_clean_pass_makes_writes_to_crash_at(tmp_path: Path) -> None:
    assert writes_of_a_clean_pass(tmp_path) > 20


def test_crash_at_every_write_then_restart_exports_exactly_once(tmp_path: Path) -> None:
    """A crash at each write of a pass in turn (however many the pass makes), then a restart."""
    total = writes_of_a_clean_pass(tmp_path / "clean")
    assert total > 20
    for nth in range(1, total + 1):
        _crash_then_restart(tmp_path / f"run{nth}", nth)


def _crash_then_restart(tmp_path: Path, nth: int) -> None:
    writes = Writes(None)
    rig, instances = staged_rig(tmp_path, writes)
    writes.crash_at = writes.count + nth
    with pytest.raises(Crash):
        rig.exporter.export_pass()
    writes.crash_at = None  # the restarted process
    time.sleep(POLICY.lease_ttl_seconds + 0.05)  # the dead pass's lease expires
    rig.exporter = rig.new_exporter()
    rig.window()
    rig.window()  # a second window finds nothing left to do
    exported = rig.exported_studies()
    states = [
        get_json(rig.store, "staging", k)
        for k in rig.store.list_keys("staging", "_export/studies/")
    ]
    at = f"crash at write {nth}"
    assert exported == sorted(s["export_id"] for s in states), f"{at}: not each in one batch"
    assert {s["state"] for s in states} == {"acked"}, at
    assert all(s["attempts"] == 1 for s in states), f"{at}: something was re-sent"
    archived = [k for k in rig.national.list_keys("archive") if k.endswith(".dcm")]
    assert len(archived) == instances, at
    assert list(rig.store.list_keys("staging", "_export/claims/")) == [], at
