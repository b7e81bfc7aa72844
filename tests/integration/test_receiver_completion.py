"""Study completion and the spool's limits: quiet period and hard maximum wait, amendments for
late instances, duplicates dropped, new versions kept, and the high-water mark (0xA700) that
refuses without losing what was accepted."""

from __future__ import annotations

import threading
from pathlib import Path

from helpers.receiver_env import LocalReceiver, local_receiver, make_trust, send_files
from helpers.util import wait_for

from smartbox.bus import MemoryBus
from smartbox.errors import TransientError
from smartbox.synthetic import make_ct_study
from smartbox.topology import Topology


def test_duplicates_dropped_late_instances_amend_new_versions_kept(tmp_path: Path) -> None:
    study = make_ct_study(31, series=1, per_series=4)
    files = study.write(tmp_path / "send")
    with local_receiver(tmp_path / "rx") as r:
        ae = r.trust.ae_title
        assert send_files(r.host, r.port, ae, files[:3]).statuses == [0, 0, 0]
        wait_for(lambda: len(r.arrived()) == 1, 30, "first study.arrived")
        # the PACS sends the same instances again: acknowledged, dropped, counted
        assert send_files(r.host, r.port, ae, files[:3]).statuses == [0, 0, 0]
        assert r.metric("smartbox_duplicate_instances_total", kind="identical") == 3
        # a late instance, and a corrected version of an announced one (same UID, new bytes)
        study.datasets[0].SeriesDescription = "corrected"
        study.datasets[0].save_as(tmp_path / "v2.dcm", enforce_file_format=True)
        assert send_files(r.host, r.port, ae, [files[3], tmp_path / "v2.dcm"]).statuses == [0, 0]
        wait_for(lambda: len(r.arrived()) == 2, 30, "the amendment")
        # the receiver counts an announcement, and clears its spool, once the broker has
        # confirmed every message of it: the messages are visible a moment before that
        wait_for(lambda: r.metric("smartbox_studies_arrived_total") == 2, 30, "announced")

        first, second = r.arrived()
        assert first["body"]["study_key"] == second["body"]["study_key"]
        assert (first["body"]["amendment"], first["body"]["instance_count"]) == (False, 3)
        assert (second["body"]["amendment"], second["body"]["instance_count"]) == (True, 2)
        keys = [{e["key"] for e in r.batch(m)["instances"]} for m in (first, second)]
        assert not keys[0] & keys[1], "an amendment carries only the new instances"
        assert len(r.quarantine()) == 5
        assert r.metric("smartbox_duplicate_instances_total", kind="new_version") == 1
        assert r.metric("smartbox_instances_received_total") == 5
        assert r.service.spool.pending_stats()[:2] == (0, 0)
        assert list(r.service.spool.files.iterdir()) == [], "spool files deleted once announced"


def test_busy_study_is_announced_at_the_hard_maximum_wait(tmp_path: Path) -> None:
    files = make_ct_study(32, series=1, per_series=2).write(tmp_path / "send")
    r = LocalReceiver(make_trust(quiet_seconds=3600, max_wait_seconds=1), tmp_path / "rx")
    try:
        assert send_files(r.host, r.port, r.trust.ae_title, files).statuses == [0, 0]
        wait_for(lambda: r.arrived_count() == 2, 30, "study.arrived after max_wait")
    finally:
        r.close()


class SwitchableBus(MemoryBus):
    """The in-process bus with an outage switch: publish fails while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__(Topology("switch"))
        self.down = threading.Event()

    def publish(self, message: dict) -> None:
        if self.down.is_set():
            raise TransientError("broker unavailable (test outage)")
        super().publish(message)


def test_high_water_mark_refuses_with_a700_and_drains_after_outage(tmp_path: Path) -> None:
    files = make_ct_study(33, series=1, per_series=6, rows=512, columns=512).write(tmp_path / "s")
    size = files[0].stat().st_size
    bus = SwitchableBus()
    bus.down.set()
    trust = make_trust(spool_high_water_bytes=2 * size + size // 2, quiet_seconds=0.2)
    r = LocalReceiver(trust, tmp_path / "rx", bus=bus)
    try:
        result = send_files(r.host, r.port, trust.ae_title, files)
        assert result.statuses == [0, 0] + [0xA700] * 4
        assert r.metric("smartbox_cstore_status_total", status="0xA700") == 4
        assert r.metric("smartbox_failures_total", stage="receive", kind="spool_full") == 4
        wait_for(lambda: r.metric("smartbox_relay_retries_total") >= 2, 30, "relay retrying")
        assert r.arrived() == [] and r.service.spool.pending_stats()[0] == 2

        bus.down.clear()  # the broker is back: the spool drains, and accepts again
        wait_for(lambda: r.arrived_count() == 2, 60, "the accepted instances announced")
        accepted = 2
        for _attempt in range(5):  # the PACS retries what was refused
            statuses = send_files(r.host, r.port, trust.ae_title, files[accepted:]).statuses
            accepted += statuses.count(0)
            assert set(statuses) <= {0, 0xA700} and statuses[0] == 0
            wait_for(lambda n=accepted: r.arrived_count() == n, 60, "the spool drained")
            if accepted == len(files):
                break
        assert accepted == len(files)
        messages = r.arrived()
        assert [m["body"]["amendment"] for m in messages] == [False] + [True] * (len(messages) - 1)
        announced = [e["key"] for m in messages for e in r.batch(m)["instances"]]
        assert len(announced) == len(set(announced)) == 6, "every instance exactly once"
        assert r.metric("smartbox_spool_high_water_bytes") == trust.spool_high_water_bytes
    finally:
        r.close()
