"""Withdrawals: exported data is withdrawn nationally; later studies of the patient held back."""

from __future__ import annotations

from pathlib import Path

from helpers.export import ExportRig, patient_of, stage_study

from consumers.withdraw import withdraw
from smartbox.store import LocalStore, get_json


def test_withdrawal_reaches_the_national_side_and_later_studies_are_held_back(
    tmp_path: Path,
) -> None:
    rig = ExportRig(LocalStore(tmp_path / "l"), LocalStore(tmp_path / "n"))
    patient = patient_of(1)
    exported = stage_study(rig.store, "RTK", 1, patient=patient)
    other = stage_study(rig.store, "RTK", 2)
    for m in (exported, other):
        rig.exporter.handle(m)
    rig.window()
    archived = [k for k in rig.national.list_keys("archive") if k.endswith(".dcm")]
    assert len(archived) == 6
    queued = stage_study(rig.store, "RGT", 3, patient=patient)  # staged, not yet exported
    rig.exporter.handle(queued)

    report = withdraw(rig.store, "staging", "RTK", patient)
    assert report.queued_for_national == [exported["body"]["batch_id"]]
    assert report.removed_unexported == [queued["body"]["batch_id"]]
    queued_objects = [
        i["key"]
        for i in get_json(rig.store, "staging", queued["body"]["manifest_key"])["instances"]
    ]  # noqa: E501
    assert not any(rig.store.exists("staging", k) for k in queued_objects)

    rig.window()
    batch = rig.batches[-1]["body"]
    assert batch["withdrawals"] == [
        {"export_id": exported["body"]["batch_id"], "study_uid": exported["body"]["study_uid"]}
    ]
    assert batch["studies"] == []  # the queued study of that patient never left
    assert rig.receipts[-1]["body"]["withdrawals"] == [
        {"export_id": exported["body"]["batch_id"], "status": "applied"}
    ]
    left = [k for k in rig.national.list_keys("archive") if k.endswith(".dcm")]
    assert len(left) == 3 and not any(exported["body"]["study_uid"] in k for k in left)
    assert list(rig.store.list_keys("staging", "_export/withdrawals/")) == []  # acknowledged

    later = stage_study(rig.store, "RRK", 4, patient=patient)  # a resend, received later
    rig.exporter.handle(later)
    record = rig.exporter.state.get("RRK", later["body"]["batch_id"])
    assert record is not None and record["state"] == "withdrawn"
    rig.window()
    assert later["body"]["batch_id"] not in rig.exported_studies()
