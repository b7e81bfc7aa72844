"""Exporter on the in-memory twins: receipts acted on, bounded retries, fairness, windows."""

from __future__ import annotations

import json
import time as time_module
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from helpers.export import ExportRig, patient_of, stage_study
from helpers.receiver_env import make_trust

import schemas
from consumers.export_policy import ExportPolicy
from consumers.exporter import Schedule
from smartbox import layout
from smartbox.errors import TransientError
from smartbox.store import LocalStore, get_json
from smartbox.trusts import TrustConfig

LONDON = ZoneInfo("Europe/London")


class FlakyStore(LocalStore):
    """A national destination that refuses one trust's objects."""

    def __init__(self, root: Path, refuse: str) -> None:
        super().__init__(root)
        self.refuse = refuse

    def put_stream(self, bucket: str, key: str, stream: object, length: int) -> None:
        if key.startswith(f"{self.refuse}/"):
            raise TransientError("national destination unavailable")
        super().put_stream(bucket, key, stream, length)


def rig(
    tmp_path: Path,
    national: LocalStore | None = None,
    trusts: dict[str, TrustConfig] | None = None,
    **policy: object,
) -> ExportRig:
    return ExportRig(
        LocalStore(tmp_path / "local"),
        national or LocalStore(tmp_path / "national"),
        ExportPolicy(**{"window_end": None, **policy}),  # type: ignore[arg-type]
        trusts=trusts,
    )


def test_every_study_acknowledged_once_and_one_trust_failure_isolated(tmp_path: Path) -> None:
    r = rig(tmp_path, FlakyStore(tmp_path / "national", refuse="RGT"))
    for n, code in enumerate(["RTK", "RTK", "RGT"]):
        r.exporter.handle(stage_study(r.store, code, n))
    first = r.window()
    assert first.failed_trusts == ["RGT"] and first.studies == {"RTK": 2}
    assert [b["trust"] for b in r.batches] == ["RTK"]
    assert [s["status"] for rc in r.receipts for s in rc["body"]["studies"]] == ["accepted"] * 2
    r.national.refuse = "NONE"  # type: ignore[attr-defined]
    second = r.window()
    assert second.studies == {"RGT": 1} and not second.failed_trusts
    assert len(r.exported_studies()) == 3 == len(set(r.exported_studies()))
    archived = [k for k in r.national.list_keys("archive") if k.endswith(".dcm")]
    assert len(archived) == 9
    states = {
        get_json(r.store, "staging", k)["state"]
        for k in r.store.list_keys("staging", "_export/studies/")
    }
    assert states == {"acked"}
    assert get_json(r.store, "staging", layout.LAST_SUCCESS)["batches"].keys() == {"RGT"}
    # a duplicate receipt acknowledges nothing twice
    r.bus.publish(r.receipts[0])
    again = r.deliver("export.receipts", r.exporter.handle_receipt)
    assert len(again) == 1
    from prometheus_client import REGISTRY

    acked = REGISTRY.get_sample_value(
        "smartbox_export_studies_acknowledged_total", {"trust": "RTK"}
    )
    assert acked is not None and acked >= 2


def test_rejected_study_is_resent_then_set_aside_after_max_attempts(tmp_path: Path) -> None:
    r = rig(tmp_path, max_attempts=2)
    msg = stage_study(r.store, "RTK", 1)
    r.exporter.handle(msg)
    r.exporter.handle(stage_study(r.store, "RTK", 2))
    victim = get_json(r.store, "staging", msg["body"]["manifest_key"])["instances"][0]["key"]

    def corrupt(national: LocalStore) -> None:  # one byte flipped in transit
        data = bytearray(national.get_bytes("national", victim))
        data[7] ^= 0x01
        national.put_bytes("national", victim, bytes(data))

    r.window(tamper=corrupt)
    assert r.receipts[0]["body"]["status"] == "partial"
    rejected = [s for s in r.receipts[0]["body"]["studies"] if s["status"] == "rejected"]
    assert [(s["export_id"], s["reason"]) for s in rejected] == [
        (msg["body"]["batch_id"], "checksum_mismatch")
    ]
    r.window(tamper=corrupt)  # the re-send (attempt 2) is corrupted again: set aside
    r.window()
    record = r.exporter.state.get("RTK", msg["body"]["batch_id"])
    assert record is not None and record["state"] == "failed" and record["attempts"] == 2
    assert r.store.exists("staging", layout.dead_key("RTK", msg["body"]["batch_id"]))
    sends = [
        s for b in r.batches for s in b["body"]["studies"] if s["export_id"] == record["export_id"]
    ]  # noqa: E501
    assert [s["attempt"] for s in sends] == [1, 2]  # bounded: never a third


def test_bad_object_is_surfaced_and_the_rest_of_the_trust_goes(tmp_path: Path) -> None:
    r = rig(tmp_path)
    bad = stage_study(r.store, "RTK", 1)
    good = stage_study(r.store, "RTK", 2)
    for m in (bad, good):
        r.exporter.handle(m)
    key = get_json(r.store, "staging", bad["body"]["manifest_key"])["instances"][1]["key"]
    r.store.put_bytes("staging", key, b"bit rot")
    summary = r.window()
    assert summary.set_aside == {"RTK": 1}
    assert r.exported_studies() == [good["body"]["batch_id"]]
    assert not r.national.exists("national", key)  # nothing unverified left at the destination
    record = r.exporter.state.get("RTK", bad["body"]["batch_id"])
    assert record is not None and record["state"] == "pending"
    assert record["reasons"] == ["size_mismatch"]


def test_round_robin_prospective_first_and_bounded_batches(tmp_path: Path) -> None:
    cohort = make_trust("RBF", backfill=True)  # the trust file: every study of it is backfill
    r = rig(tmp_path, trusts={"RBF": cohort}, max_batch_studies=2)
    for n in range(5):
        r.exporter.handle(stage_study(r.store, "RBF", 100 + n))  # a backfill cohort
    for n in range(3):
        r.exporter.handle(stage_study(r.store, "RGT", n))
        r.exporter.handle(stage_study(r.store, "RTK", 10 + n))
    r.window()
    order = [(b["trust"], b["body"]["study_count"]) for b in r.batches]
    assert order == [
        ("RGT", 2), ("RTK", 2), ("RGT", 1), ("RTK", 1),  # prospective, round-robin
        ("RBF", 2), ("RBF", 2), ("RBF", 1),  # then the backfill
    ]  # fmt: skip


def test_no_new_batch_after_the_window_end(tmp_path: Path) -> None:
    closed = ExportPolicy(window_end=time(6, 0), timezone="UTC")
    at_five = datetime(2026, 1, 1, 5, 0, tzinfo=UTC)
    assert closed.deadline(at_five) == datetime(2026, 1, 1, 6, 0, tzinfo=UTC)
    assert closed.deadline(datetime(2026, 1, 1, 7, 0, tzinfo=UTC)).day == 2

    r = rig(tmp_path, max_batch_studies=1)
    for n in range(3):
        r.exporter.handle(stage_study(r.store, "RTK", n))
    ticks = iter(
        datetime(2026, 1, 1, 5, 0, tzinfo=UTC) + timedelta(minutes=40 * i) for i in range(99)
    )
    r.exporter.clock = lambda: next(ticks)  # 05:00 start, 05:40 first batch, 06:20 closed
    r.exporter.policy = ExportPolicy(window_end=time(6, 0), timezone="UTC", max_batch_studies=1)
    summary = r.window()
    assert summary.window_closed and summary.studies == {"RTK": 1}
    r.exporter.policy = ExportPolicy(window_end=None, max_batch_studies=1)
    rest = r.window()
    assert rest.studies == {"RTK": 2} and not rest.window_closed
    assert len(r.exported_studies()) == 3


def test_schedule_is_nightly_in_london_across_clock_changes() -> None:
    schedule = Schedule("0 1 * * *", "Europe/London")
    before = datetime(2025, 10, 25, 23, 0, tzinfo=LONDON)
    nxt = schedule.next_after(before)
    assert (nxt.day, nxt.hour, nxt.minute) == (26, 1, 0)
    summer = schedule.next_after(datetime(2026, 7, 1, 12, 0, tzinfo=LONDON))
    assert (summer.day, summer.hour, summer.utcoffset().total_seconds()) == (2, 1, 3600)
    with pytest.raises(ValueError):
        Schedule("every night", "Europe/London")


def test_exhausted_study_is_dead_lettered_visibly_and_a_replay_grants_one_more_round(
    tmp_path: Path,
) -> None:
    r = rig(tmp_path, max_attempts=1)
    patient = patient_of(4242)
    msg = stage_study(r.store, "RTK", 1, patient=patient)
    export_id = msg["body"]["batch_id"]
    r.exporter.handle(msg)
    victim = get_json(r.store, "staging", msg["body"]["manifest_key"])["instances"][0]["key"]

    def corrupt(national: LocalStore) -> None:
        data = bytearray(national.get_bytes("national", victim))
        data[3] ^= 0x01
        national.put_bytes("national", victim, bytes(data))

    def dead_letters() -> list[tuple[dict, dict]]:
        return r.bus.messages(r.bus.topology.dlq("exporter"))

    r.window(tamper=corrupt)
    [(letter, headers)] = dead_letters()
    schemas.validate(letter)  # a contract like any message: schema-valid, no patient data
    assert (letter["schema"], letter["trust"]) == ("export.failed", "RTK")
    body = letter["body"]
    assert (body["export_id"], body["reason"], body["attempts"], body["round"]) == (
        export_id,
        "checksum_mismatch",
        1,
        1,
    )
    assert "checksum_mismatch" in headers["x-smartbox-reason"]
    assert patient not in json.dumps(letter) and patient not in json.dumps(headers)

    replayed = r.replay_dead_letters()  # smartbox dlq replay exporter
    r.bus.publish(replayed[0])  # the same letter replayed twice grants one round, not two
    assert len(r.deliver("exporter", r.exporter.handle)) == 2
    record = r.exporter.state.get("RTK", export_id)
    assert record is not None and record["state"] == "pending"
    assert not r.store.exists("staging", layout.dead_key("RTK", export_id))

    r.window(tamper=corrupt)  # the extra round is bounded too: rejected again, set aside again
    r.window()
    [(again, _)] = dead_letters()
    assert (again["body"]["round"], again["body"]["attempts"]) == (2, 2)
    assert again["message_id"] != letter["message_id"]

    r.replay_dead_letters()
    r.deliver("exporter", r.exporter.handle)
    r.window()
    record = r.exporter.state.get("RTK", export_id)
    assert record is not None and record["state"] == "acked" and record["attempts"] == 3
    sends = [s["attempt"] for b in r.batches for s in b["body"]["studies"]]
    assert sends == [1, 2, 3]  # one send per round granted, never an endless loop
    assert dead_letters() == []


def test_a_backlog_never_delays_another_trusts_daily_studies_past_the_window(
    tmp_path: Path,
) -> None:
    """RBL (an archive migration: 20 old studies, half from its archive's AE, half acquired
    400 days before they arrived, recorded two days ago) and one daily study; RDY, five daily
    studies. The window allows five batch starts of two studies: every daily study goes."""
    trusts = {
        "RBL": make_trust("RBL", backfill_callers=("ARCHIVE",), prospective_max_age_days=30),
        "RDY": make_trust("RDY"),
    }
    r = rig(tmp_path, trusts=trusts, max_batch_studies=2)
    real = time_module.time
    with mock.patch("time.time", lambda: real() - 2 * 86400):  # the backlog came first
        for n in range(20):
            old = {"calling_aes": ["ARCHIVE"]} if n % 2 else {"acquired_days_before_arrival": 400}
            r.exporter.handle(stage_study(r.store, "RBL", 100 + n, source=old))
    daily = {"calling_aes": ["TEST_PACS"], "acquired_days_before_arrival": 0}
    prospective = [stage_study(r.store, "RBL", 1, source=daily)]
    prospective += [stage_study(r.store, "RDY", n, source=daily) for n in range(5)]
    for m in prospective:
        r.exporter.handle(m)

    start = datetime(2026, 1, 1, 5, 0, tzinfo=UTC)
    ticks = iter(start + timedelta(minutes=10 * i) for i in range(99))
    r.exporter.clock = lambda: next(ticks)  # a batch may start at 05:10 ... 05:50, not 06:00
    r.exporter.policy = ExportPolicy(window_end=time(6, 0), timezone="UTC", max_batch_studies=2)
    summary = r.window()
    assert summary.window_closed
    assert sorted(r.exported_studies()) == sorted(m["body"]["batch_id"] for m in prospective)
    order = [(b["trust"], b["body"]["study_count"]) for b in r.batches]
    assert order == [("RBL", 1), ("RDY", 2), ("RDY", 2), ("RDY", 1)]
    record = r.exporter.state.get("RBL", prospective[0]["body"]["batch_id"])
    assert record is not None and record["class"] == "prospective"

    r.exporter.policy = ExportPolicy(window_end=None, max_batch_studies=2)
    rest = r.window()  # the next window: the backlog, round-robin as ever
    assert rest.studies == {"RBL": 20}
