"""What ``smartbox status``, ``reconcile`` and the transparency report count of a trust's
clinical records (``consumers.clinical.counts``), in process: the real submit, clinical stage,
exporter and national ingest over the in-memory bus and local object store. Staged = exported
+ pending; a staged record the exporter cannot see is a visible discrepancy."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from helpers.clinical import NHS_A, NHS_B, NHS_BAD, NHS_C, identified, write_csv
from helpers.export import ExportRig
from helpers.receiver_env import make_trust

from consumers.clinical.counts import count
from consumers.clinical.stage import ClinicalStage
from consumers.clinical.submit import prepare, publish
from consumers.deid.policy import PolicyBuilder
from smartbox import layout
from smartbox.app.report import build_report
from smartbox.app.report_html import render
from smartbox.keys import RegionalKey
from smartbox.store import LocalStore

KEY = RegionalKey(b"clinical-count-tests-" + b"4" * 20)
TODAY = date(2026, 12, 1)


def _submit(rig: ExportRig, tmp_path: Path) -> None:
    rows = [
        identified(NHS_A),
        identified(NHS_B),
        identified(NHS_C),
        identified(NHS_BAD),  # nhs_number_checksum
        identified(NHS_C, swab_1_date="2021-02-30"),  # date_invalid
    ]
    sub = prepare(
        write_csv(tmp_path / "c.csv", rows), make_trust("RCL"), KEY, PolicyBuilder(), TODAY
    )
    publish(rig.bus, "RCL", sub)
    publish(rig.bus, "RCL", sub)  # delivered again: duplicates, one report, counted once
    rig.deliver("clinical", ClinicalStage(rig.store).handle)


def test_counts_follow_records_from_submission_to_acknowledgement(tmp_path: Path) -> None:
    rig = ExportRig(LocalStore(tmp_path / "s3"), LocalStore(tmp_path / "national"))
    _submit(rig, tmp_path)
    c = count(rig.store, "staging", "RCL", check=True)
    assert (c.submissions, c.rows, c.accepted, c.held_back) == (1, 5, 3, 2)
    assert c.held_back_reasons == {"date_invalid": 1, "nhs_number_checksum": 1}
    assert (c.staged, c.pending, c.exported, c.acknowledged) == (3, 3, 0, 0)
    assert c.discrepancy == 0 and c.problems == []

    rig.window()  # one export pass; the national ingest answers
    c = count(rig.store, "staging", "RCL", check=True)
    assert (c.staged, c.pending, c.exported, c.acknowledged, c.in_flight) == (3, 0, 3, 3, 0)
    assert c.problems == []
    # another trust, and a window before any of it: nothing
    assert count(rig.store, "staging", "RTH").staged == 0
    assert count(rig.store, "staging", "RCL", until=1.0).staged == 0


def test_a_staged_record_the_exporter_cannot_see_is_a_discrepancy(tmp_path: Path) -> None:
    rig = ExportRig(LocalStore(tmp_path / "s3"), LocalStore(tmp_path / "national"))
    _submit(rig, tmp_path)
    states = sorted(rig.store.list_keys("staging", "_export/clinical/RCL/"))
    first = json.loads(rig.store.get_bytes("staging", states[0]))
    second = json.loads(rig.store.get_bytes("staging", states[1]))
    # a record staged whose export state was never written (the stage stopped in between)
    rig.store.put_bytes("staging", layout.clinical_record_key("RCL", "f" * 32, "a" * 64), b"{}")
    # a pending record's queue marker lost; another's staged object gone
    rig.store.delete("staging", layout.clinical_queue_key("RCL", first["export_id"]))
    rig.store.delete("staging", second["key"])
    c = count(rig.store, "staging", "RCL", check=True)
    assert (c.staged, c.exported, c.pending) == (4, 0, 3)
    assert c.discrepancy == 1
    assert (c.not_recorded, c.not_queued, c.missing_objects) == (1, 1, 1)
    assert c.problems == [
        "RCL: clinical: 4 staged != 0 exported + 3 pending + 0 withdrawn before export",
        "RCL: clinical: 1 staged record(s) with no export state: never exported (resubmit "
        "the file: the stage records them again)",
        "RCL: clinical: 1 record(s) waiting with no queue marker: the exporter will not send them",
        "RCL: clinical: 1 record(s) waiting whose staged object is gone: their copy to the "
        "national bucket fails",
    ]
    # status and the report do not check (no listing of staged records): counts only
    assert count(rig.store, "staging", "RCL").problems == []


def test_the_transparency_report_has_the_clinical_records(tmp_path: Path) -> None:
    rig = ExportRig(LocalStore(tmp_path / "s3"), LocalStore(tmp_path / "national"))
    _submit(rig, tmp_path)
    rig.window()
    today = date.today()
    report = build_report(rig.store, code="RCL", start=today, end=today, timezone="UTC")
    assert report.clinical is not None
    assert (report.clinical.accepted, report.clinical.held_back) == (3, 2)
    assert (report.clinical.staged, report.clinical.acknowledged) == (3, 3)
    page = render(report)
    assert '<table id="clinical">' in page
    assert '<tr><td>Records acknowledged</td><td class="n">3</td></tr>' in page
    assert '<tr><td>nhs_number_checksum</td><td class="n">1</td></tr>' in page
    assert NHS_A not in page and report.clinical.trust == "RCL"
