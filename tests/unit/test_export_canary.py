"""Probe studies never reach the national bucket: the anonymiser marks them, the exporter keeps
them out of every batch a pass makes, and with a canary bucket exports them alone, there."""

from __future__ import annotations

import json
import random
import re
import uuid
from pathlib import Path
from typing import Any

from helpers.export import ExportRig, stage_study
from helpers.quarantine import part10, quarantine_batch
from helpers.receiver_env import KEY, make_trust
from pydicom.uid import generate_uid

from consumers.anonymiser import Anonymiser
from consumers.export_policy import ExportPolicy
from smartbox import layout
from smartbox.bus import MemoryBus
from smartbox.canary import is_probe_uid, probe_study_uid
from smartbox.store import LocalStore, get_json
from smartbox.synthetic import make_ct_study, make_probe_study


def rig(tmp_path: Path, canary: str | None) -> ExportRig:
    policy = ExportPolicy(window_end=None, canary_bucket=canary)
    return ExportRig(LocalStore(tmp_path / "local"), LocalStore(tmp_path / "national"), policy)


def probe_staged(r: ExportRig, n: int) -> dict[str, Any]:
    message = stage_study(r.store, "RTK", n)
    message["body"]["synthetic"] = True
    return message


def record(r: ExportRig, message: dict[str, Any]) -> dict[str, Any]:
    return dict(r.exporter.state.get("RTK", message["body"]["batch_id"]) or {})


def objects(store: LocalStore, bucket: str) -> list[str]:
    return sorted(store.list_keys(bucket)) if (store.root / bucket).is_dir() else []


def test_the_anonymiser_marks_the_probe_patient_only(tmp_path: Path) -> None:
    store, bus, trust = LocalStore(tmp_path / "objects"), MemoryBus(), make_trust()
    anonymiser = Anonymiser(store, bus, KEY, {trust.code: trust}, workers=1)
    for study in (make_probe_study(11), make_ct_study(12, series=1, per_series=2)):
        anonymiser.handle(quarantine_batch(store, trust.code, [part10(d) for d in study.datasets]))
    probe, real = [m for m, _h in bus.messages(bus.topology.queue("exporter"))]
    assert probe["body"]["synthetic"] is True and "synthetic" not in real["body"]
    manifests = [get_json(store, "staging", m["body"]["manifest_key"]) for m in (probe, real)]
    assert manifests[0]["synthetic"] is True and "synthetic" not in manifests[1]
    assert probe["body"]["instances_staged"] == 2


def test_without_a_canary_a_probe_is_recorded_held_and_never_exported(tmp_path: Path) -> None:
    r = rig(tmp_path, canary=None)
    probe, real = probe_staged(r, 1), stage_study(r.store, "RTK", 2)
    r.exporter.handle(probe)
    r.exporter.handle(real)
    assert record(r, probe)["state"] == "held" and record(r, probe)["synthetic"] is True
    r.window()
    exported = [s["export_id"] for b in r.batches for s in b["body"]["studies"]]
    assert exported == [real["body"]["batch_id"]]
    assert not any(probe["body"]["study_uid"] in k for k in objects(r.national, "national"))


def test_with_a_canary_a_probe_goes_alone_to_the_canary_and_is_archived_nowhere(
    tmp_path: Path,
) -> None:
    r = rig(tmp_path, canary="canary")
    probe, real = probe_staged(r, 1), stage_study(r.store, "RTK", 2)
    r.exporter.handle(probe)  # exported at once, not at the next window
    [batch] = r.drain("national.ingest")
    assert batch["body"]["synthetic"] is True and batch["body"]["bucket"] == "canary"
    assert [s["export_id"] for s in batch["body"]["studies"]] == [probe["body"]["batch_id"]]
    signed = json.loads(r.national.get_bytes("canary", batch["body"]["manifest_key"]))
    assert signed["synthetic"] is True
    assert objects(r.national, "national") == []
    r.bus.publish(batch)
    r.deliver("national.ingest", r.ingest.handle)
    [receipt] = r.deliver("export.receipts", r.exporter.handle_receipt)
    assert receipt["body"]["status"] == "accepted"
    assert objects(r.national, "archive") == [layout.ingest_batch_key(batch["body"]["batch_id"])]
    assert record(r, probe)["state"] == "acked"
    # a real study of the same trust still goes to the national bucket, without the probe
    r.exporter.handle(real)
    r.window()
    assert {s["export_id"] for b in r.batches for s in b["body"]["studies"]} == {
        real["body"]["batch_id"]
    }
    assert any(real["body"]["study_uid"] in k for k in objects(r.national, "national"))
    assert not any(probe["body"]["study_uid"] in k for k in objects(r.national, "national"))


def test_a_probe_requeued_by_any_path_is_dropped_by_the_pass(tmp_path: Path) -> None:
    r = rig(tmp_path, canary=None)
    probe = probe_staged(r, 1)
    r.exporter.handle(probe)
    rec = record(r, probe)
    rec["state"] = "pending"  # what a receipt timeout's requeue would leave
    r.exporter.state.put(rec)
    r.exporter.state.enqueue(rec)
    summary = r.window()
    assert summary.studies == {} and r.batches == []
    assert list(r.exporter.state.queued("RTK", rec["class"])) == []


def test_the_national_side_archives_nothing_only_if_the_signed_manifest_says_synthetic(
    tmp_path: Path,
) -> None:
    r = rig(tmp_path, canary=None)
    r.exporter.handle(stage_study(r.store, "RTK", 3))
    r.exporter.export_pass()
    [batch] = r.drain("national.ingest")
    batch["body"]["synthetic"] = True  # a real batch claimed synthetic outside the signature
    r.bus.publish(batch)
    r.deliver("national.ingest", r.ingest.handle)
    [receipt] = r.drain("export.receipts")
    assert receipt["body"]["status"] == "rejected"
    assert {s["reason"] for s in receipt["body"]["studies"]} == {"manifest_invalid"}


def test_probe_study_uids_are_marked_version_8_uuids_and_real_ones_are_not() -> None:
    rng = random.Random(5)
    uids = {probe_study_uid(rng) for _ in range(100)}
    assert len(uids) == 100 and all(is_probe_uid(u) for u in uids)
    for u in uids:
        assert re.match(r"^2\.25\.[1-9][0-9]{0,38}$", u) and len(u) <= 64
        assert uuid.UUID(int=int(u[5:])).version == 8
    assert is_probe_uid(make_probe_study(3).study_uid)
    assert not any(is_probe_uid(str(generate_uid(prefix=None))) for _ in range(1000))
    assert not any(is_probe_uid(u) for u in ("", "2.25.", "1.2.3", "2.25.x", "2.25." + "9" * 40))


def test_the_transparency_report_leaves_probe_studies_out(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    from smartbox.report_records import read_records

    store, bus, trust = LocalStore(tmp_path / "objects"), MemoryBus(), make_trust()
    anonymiser = Anonymiser(store, bus, KEY, {trust.code: trust}, workers=1)
    for study in (make_probe_study(21), make_ct_study(22, series=1, per_series=3)):
        anonymiser.handle(quarantine_batch(store, trust.code, [part10(d) for d in study.datasets]))
    tz = ZoneInfo("UTC")
    code = trust.code
    records = read_records(store, quarantine="quarantine", staging="staging", code=code, tz=tz)
    assert [r.instances for r in records.received] == [3]
    assert [s.instances for s in records.staged] == [3]
    assert len(records.probes) == 1
