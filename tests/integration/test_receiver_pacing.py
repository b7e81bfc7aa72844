"""Intake pacing against a real sender: while the uploads to quarantine lag behind and
progress, the receiver holds its C-STORE responses back (in its SCP worker processes too); while
they make no progress (storage down) it never does. Every instance is answered Success either
way, and reaches quarantine once storage answers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from helpers.receiver_env import LocalReceiver, make_trust, storescu
from helpers.util import wait_for

from smartbox.errors import TransientError
from smartbox.store import LocalStore
from smartbox.synthetic import make_ct_study

PACED = "smartbox_receiver_paced_seconds_total"
PACE = "smartbox_receiver_intake_pace_seconds"
LAG = "smartbox_receiver_upload_lag_seconds"
N = 480


class SlowStore(LocalStore):
    """Uploads at ~40/s (4 upload threads, 0.1 s each), far slower than intake here, until
    ``fast`` is set (the test then need not wait for 40/s)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fast = threading.Event()

    def put_file(self, bucket, key, path, **kwargs):  # type: ignore[no-untyped-def]
        if not self.fast.is_set():
            time.sleep(0.1)
        super().put_file(bucket, key, path, **kwargs)


class DownStore(LocalStore):
    """Storage that answers nothing until ``up`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.up = threading.Event()

    def put_file(self, bucket, key, path, **kwargs):  # type: ignore[no-untyped-def]
        if not self.up.is_set():
            raise TransientError("storage down (test)")
        super().put_file(bucket, key, path, **kwargs)


def corpus(tmp_path: Path) -> list[Path]:
    return make_ct_study(71, series=4, per_series=N // 4, rows=32, columns=32).write(
        tmp_path / "in"
    )


def send(r: LocalReceiver, files: list[Path]) -> None:
    proc = storescu(r.host, r.port, r.trust.ae_title, files)
    assert proc.returncode == 0, proc.stderr[-400:]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_sender_faster_than_the_uploads_is_slowed_and_nothing_is_lost(
    tmp_path: Path, workers: int
) -> None:
    files = corpus(tmp_path)
    trust = make_trust(quiet_seconds=1.0, intake_pace_lag_seconds=0.5)
    store = SlowStore(tmp_path / "obj")
    r = LocalReceiver(trust, tmp_path / "rx", workers, object_store=store)
    try:
        send(r, files[: N // 2])
        # the uploads (40/s) are now over a second behind, and progressing: the next sending
        # is paced from its first C-STORE (the pace is set every relay poll, 0.1 s here)
        wait_for(lambda: r.metric(LAG) > 1.0 and r.metric(PACE) > 0, 10, "lag and pace")
        send(r, files[N // 2 :])
        # a worker's counters reach this process every quarter second
        wait_for(lambda: r.metric("smartbox_instances_received_total") == N, 10, "all counted")
        wait_for(lambda: r.metric(PACED) > 0, 10, "responses held back")
        store.fast.set()
        wait_for(lambda: r.arrived_count() == N, 60, "every instance announced")
        assert len(r.quarantine_keys()) == N
        wait_for(lambda: r.metric(PACE) == 0, 30, "the pace back to 0 once caught up")
    finally:
        r.close()


@pytest.mark.parametrize("lag", [None, 0])
def test_a_lag_under_the_target_or_pacing_off_holds_nothing_back(
    tmp_path: Path, lag: float | None
) -> None:
    """The default target is a sustained overload (a minute here): a burst that out-runs the
    uploads for a few seconds is not paced; nor is anything with the target 0."""
    files = corpus(tmp_path)
    trust = make_trust(quiet_seconds=1.0, intake_pace_lag_seconds=lag)
    store = SlowStore(tmp_path / "obj")
    r = LocalReceiver(trust, tmp_path / "rx", object_store=store)
    try:
        send(r, files)
        wait_for(lambda: r.metric(LAG) > 1.0, 10, "a lag")
        store.fast.set()
        wait_for(lambda: r.arrived_count() == N, 60, "every instance announced")
        assert r.metric(PACED) == 0
    finally:
        r.close()


def test_storage_down_is_absorbed_by_the_spool_not_by_slowing_senders(tmp_path: Path) -> None:
    files = corpus(tmp_path)
    store = DownStore(tmp_path / "obj")
    trust = make_trust(quiet_seconds=1.0, intake_pace_lag_seconds=0.5)
    r = LocalReceiver(trust, tmp_path / "rx", object_store=store)
    try:
        send(r, files)
        assert r.metric("smartbox_instances_received_total") == N
        assert r.metric("smartbox_receiver_upload_backlog_instances") == N or wait_for(
            lambda: r.metric("smartbox_receiver_upload_backlog_instances") == N, 5, "backlog"
        )
        assert r.metric(PACED) == 0 and r.metric(PACE) == 0
        store.up.set()
        wait_for(lambda: r.arrived_count() == N, 60, "every instance announced")
        assert len(r.quarantine_keys()) == N
    finally:
        r.close()
