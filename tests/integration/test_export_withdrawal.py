"""A withdrawal end to end with the real receiver and anonymiser (in-process, loopback DICOM):
the exported study is withdrawn nationally and acknowledged; a later resend of that patient's
study is held back by the anonymiser with the reason ``withdrawn``."""

from __future__ import annotations

from pathlib import Path

from helpers.local_pipeline import local_pipeline
from helpers.receiver_env import KEY, make_trust
from helpers.util import wait_for

from consumers.withdraw import withdraw
from consumers.withdraw_resolve import resolve_patient
from smartbox.synthetic import make_ct_study

NHS = "9434765919"  # a valid NHS number (check digit), synthetic


def test_withdrawn_patient_removed_nationally_and_later_resend_held_back(tmp_path: Path) -> None:
    with local_pipeline(tmp_path, "RWD") as p:
        p.send(make_ct_study(11, series=1, per_series=2, nhs_number=NHS))
        assert p.export() == 2
        archive = "national-archive"
        assert len([k for k in p.national.list_keys(archive) if k.endswith(".dcm")]) == 2
        [patient] = resolve_patient(p.store, "quarantine", make_trust("RWD"), KEY, nhs_number=NHS)
        report = withdraw(p.store, "staging", "RWD", patient)
        assert len(report.queued_for_national) == 1
        p.exporter.export_pass()
        wait_for(
            lambda: not list(p.store.list_keys("staging", "_export/withdrawals/")),
            60,
            "withdrawal acknowledged by the national side",
        )
        assert [k for k in p.national.list_keys(archive) if k.endswith(".dcm")] == []

        p.send(make_ct_study(12, series=1, per_series=2, nhs_number=NHS))  # a later resend
        latest = max(p.staging_records(), key=lambda m: len(m["held_back"]))
        assert [h["reason"] for h in latest["held_back"]] == ["withdrawn", "withdrawn"]
        assert latest["instances"] == []
        assert p.export() == 0
