"""Storage keys built and parsed in one module; the lease on the local twin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smartbox import layout
from smartbox.lease import Lease, LeaseLost
from smartbox.store import LocalStore

STUDY_KEY, BATCH = "a" * 32, "b" * 32


def test_keys_round_trip_and_reject_other_shapes() -> None:
    qkey = layout.quarantine_batch_key("RTK", STUDY_KEY, BATCH)
    assert layout.parse_quarantine_batch_key(qkey) == layout.QuarantineBatch(
        "RTK", STUDY_KEY, BATCH
    )
    mkey = layout.study_manifest_key("RTK", "2.25.123", BATCH)
    assert layout.parse_study_manifest_key(mkey) == layout.StudyManifestRef(
        "RTK", "2.25.123", BATCH
    )
    assert layout.is_study_manifest_key(mkey) and not layout.is_study_manifest_key(qkey)
    with pytest.raises(ValueError):
        layout.parse_quarantine_batch_key(mkey)
    queue = layout.queue_key("RTK", "prospective", "2026-01-02", BATCH)
    assert (layout.marker_day(queue), layout.marker_id(queue)) == ("2026-01-02", BATCH)
    assert layout.day_of(0) == "1970-01-01"
    # the anonymiser's and receiver's object keys come from here too
    sha = "c" * 64
    assert (
        layout.staged_instance_key("RTK", "2.25.1", "2.25.2", sha)
        == f"RTK/2.25.1/2.25.2-{'c' * 16}.dcm"
    )
    assert layout.quarantine_instance_key("RTK", STUDY_KEY, "d" * 32, sha).endswith(
        "-cccccccccccccccc.dcm"
    )


def test_lease_one_holder_renewal_takeover_of_expired_and_dead(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.ensure_bucket("staging")
    first, second = (
        Lease(store, "staging", "lease", ttl=60),
        Lease(store, "staging", "lease", ttl=60),
    )
    assert first.acquire() and not second.acquire()
    assert second.holder is not None and second.holder["owner"] == first.owner
    first.renew()
    # a holder whose process is gone (same host) is taken over at once
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )  # noqa: E501
    body = json.loads(store.get_bytes("staging", "lease"))
    body["pid"] = int(dead.stdout)
    store.put_bytes("staging", "lease", json.dumps(body).encode())
    assert second.acquire()
    with pytest.raises(LeaseLost):
        first.renew()  # the old holder finds out before its next step
    expired = Lease(store, "staging", "lease", ttl=0.0)
    second.release()
    assert expired.acquire()
