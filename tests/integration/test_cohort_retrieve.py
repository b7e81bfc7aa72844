"""A cohort retrieved from a real archive (Orthanc, the Debian package) to the trust's real
receiver (``smartbox receive``), de-identified by the real anonymiser into staging.

The archive holds studies of five patients: in the cohort's date window or not, chest or not
(a head CT, an abdomen CT decided only at SERIES level), one patient outside the cohort, one
cohort patient with nothing in the archive. Two counting relays watch the wire: one in front of
the receiver (the archive's C-STORE sub-operations and the receiver's answers) and one in
front of the archive (the cohort process's associations). Mid-run the archive is restarted
and the cohort process killed with SIGKILL; both are started again.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.cohort import cohort_status, orthanc_pipeline, retrieve_table, staged_studies
from helpers.dicom_relay import Relay
from helpers.pipeline import KEY, Pipeline
from helpers.receiver_e2e import declare_topology, wait_dicom_port
from helpers.receiver_orthanc import Orthanc
from helpers.util import wait_for

from consumers.deid.pseudonyms import Pseudonymiser
from smartbox.keys import RegionalKey
from smartbox.synthetic import make_ct_study, make_nhs_number

CODE = "RTK"
RATE, BURST, ASSOCIATIONS = 4, 6, 2
PER_STUDY = 6  # 2 series x 3 instances


@pytest.fixture
def pipeline(tmp_path: Path, rabbitmq_url: str, namespace: str, s3_server) -> Iterator[Pipeline]:
    yield from orthanc_pipeline(tmp_path, rabbitmq_url, namespace, s3_server)


def _study(seed: int, patient_id: str, day: str, description: str, body_part: str = ""):
    study = make_ct_study(seed, series=2, per_series=3, nhs_number=patient_id)
    for ds in study.datasets:
        ds.PatientID = patient_id
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
        ds.StudyDescription = description
        if body_part:
            ds.BodyPartExamined = body_part
    return study


def _retrieve_table(archive_port: int) -> str:
    return retrieve_table(
        CODE,
        archive_port,
        associations=ASSOCIATIONS,
        rate=RATE,
        burst=BURST,
        extra="resume_grace_seconds = 3\n",
    )


def test_a_cohort_is_retrieved_exactly_once_gently_and_across_restarts(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    p = pipeline
    rng = random.Random(12)
    nhs = [make_nhs_number(rng) for _ in range(5)]
    local_id = "RTK-LOCAL-7"
    wanted = [
        _study(1, nhs[0], "20200315", "CT CHEST"),
        _study(2, nhs[0], "20201120", "CT CHEST W CONTRAST"),
        _study(3, nhs[1], "20200701", "CT", body_part="CHEST"),  # decided at SERIES level
        _study(4, local_id, "20200402", "CT THORAX"),
    ]
    unwanted = [
        _study(5, nhs[0], "20190101", "CT CHEST"),  # before the window
        _study(6, nhs[0], "20200601", "CT HEAD"),  # not chest
        _study(7, nhs[1], "20200801", "CT", body_part="ABDOMEN"),
        _study(8, nhs[4], "20200301", "CT CHEST"),  # patient not in the cohort
    ]
    # the receiver, behind a relay that counts what the archive sends it
    p.add_trust(CODE, quiet_seconds=1)
    receiver_relay = Relay(("127.0.0.1", p.trusts[CODE]), response_delay=0.1)
    orthanc = Orthanc(
        tmp_path / "orthanc",
        f"{CODE}_PACS",
        {
            "smartbox": (f"SMARTBOX_{CODE}", "127.0.0.1", receiver_relay.port),
            "cohort": ("SMARTBOX_QR", "127.0.0.1", 1),  # may C-FIND and C-MOVE
        },
    ).start()
    archive_relay = Relay(("127.0.0.1", orthanc.dicom_port))
    trust_file = p.root / "trusts" / f"{CODE}.toml"
    trust_file.write_text(trust_file.read_text() + _retrieve_table(archive_relay.port))
    try:
        for i, study in enumerate(wanted + unwanted):
            orthanc.upload(study.write(tmp_path / f"s{i}"))
        assert len(orthanc.get("/studies")) == 8

        check = p.run_cli("check-config")
        assert check.returncode == 0, check.stderr
        declare_topology(p)
        p.start(f"receiver-{CODE}", "receive", "--trust", CODE)
        wait_dicom_port(p, CODE)
        p.start("anonymiser", "anonymise")

        cohort_csv = tmp_path / "cohort.csv"
        cohort_csv.write_text(
            "nhs_number,patient_id,date_from,date_to\n"
            f"{nhs[0]},,2020-01-01,2020-12-31\n"
            f"{nhs[1][:3]} {nhs[1][3:6]} {nhs[1][6:]},,2020-01-01,2020-12-31\n"
            f",{local_id},2020-01-01,2020-12-31\n"
            f"{nhs[3]},,2020-01-01,2020-12-31\n"
        )
        submitted = p.run_cli("cohort", "submit", "--trust", CODE, str(cohort_csv))
        assert submitted.returncode == 0, submitted.stderr
        cohort_id = submitted.stdout.split()[0]

        p.start("cohort", "cohort", "run", "--trust", CODE)
        expected = PER_STUDY * len(wanted)

        def in_the_middle_of_a_study(after: int) -> bool:
            n = len(receiver_relay.responses)
            return n > after and 2 <= n % PER_STUDY <= PER_STUDY - 2

        wait_for(lambda: in_the_middle_of_a_study(0), 120, "a move under way")
        p.kill("cohort")  # SIGKILL in the middle of a move ...
        orthanc.stop()  # ... and the archive restarted
        orthanc.start()
        interrupted = len(receiver_relay.responses)
        assert interrupted < expected, "the run ended before the restarts"
        p.start("cohort", "cohort", "run", "--trust", CODE)
        # the archive restarted again under a running cohort process, mid-move
        wait_for(lambda: in_the_middle_of_a_study(interrupted + 2), 120, "another move")
        orthanc.stop()
        orthanc.start()

        wait_for(lambda: cohort_status(p, CODE, cohort_id)["done"], 240, "the cohort", 1)
        names = Pseudonymiser(RegionalKey.from_env({"SMARTBOX_PSEUDONYM_KEY": KEY}), CODE, 1)
        expected_staged = {names.uid(s.study_uid) for s in wanted}
        wait_for(lambda: staged_studies(p, CODE) >= expected_staged, 120, "the studies staged", 0.5)
        time.sleep(3)  # past the receiver's quiet period: anything extra would show now
        status = cohort_status(p, CODE, cohort_id)
        sent_before_again = len(receiver_relay.requests)

        # the same cohort again: everything is in the receiver's ledger, nothing is moved
        again = p.run_cli("cohort", "submit", "--trust", CODE, str(cohort_csv))
        assert again.returncode == 0, again.stderr
        again_id = again.stdout.split()[0]
        wait_for(lambda: cohort_status(p, CODE, again_id)["done"], 120, "the second cohort", 1)
        again_status = cohort_status(p, CODE, again_id)
    finally:
        orthanc.stop()
        receiver_relay.close()
        archive_relay.close()

    # exactly the matching studies, each instance once
    assert staged_studies(p, CODE) == expected_staged
    assert status["studies"] == {"retrieved": 4, "filtered": 2}, status
    assert status["patients"] == {"queried": 4}, status
    assert len(receiver_relay.responses) == expected, "an instance was sent twice (or missed)"
    assert len(receiver_relay.requests) == expected
    assert p.metric(f"receiver-{CODE}", "smartbox_instances_received_total", trust=CODE) == expected
    for kind in ("identical", "new_version"):
        dup = p.metric(f"receiver-{CODE}", "smartbox_duplicate_instances_total", kind=kind)
        assert dup == 0, kind

    assert again_status["studies"] == {"already_received": 4, "filtered": 2}, again_status
    assert len(receiver_relay.requests) == sent_before_again

    # the limits, as seen on the wire
    assert 1 <= archive_relay.max_open <= ASSOCIATIONS
    times = sorted(receiver_relay.requests)
    # the bucket allows BURST + RATE * T instances in any T seconds; one study of slack for
    # the lag between a move being asked and its instances arriving (a loaded machine)
    worst = max(
        (j - i + 1) - RATE * (times[j] - times[i])
        for i in range(len(times))
        for j in range(i, len(times))
    )
    assert worst <= BURST + PER_STUDY, worst

    # retrieved studies follow the normal path, marked as retrieved (backfill)
    batches = [
        json.loads(p.read("quarantine", k)) for k in p.objects("quarantine") if "/batches/" in k
    ]
    assert batches and all(b["origin"] == "retrieved" for b in batches)
    assert all(b["move_originators"] == ["SMARTBOX_QR"] for b in batches)

    # the report: by pseudonym only
    report = p.run_cli("cohort", "report", "--trust", CODE, cohort_id, "--json")
    assert report.returncode == 0, report.stderr
    out = json.loads(report.stdout)
    not_found = names.patient(nhs[3], None)[0]
    assert out["patients_not_found"] == [not_found]
    resumed = "".join(f.read_text() for f in p.root.glob("cohort.*.log"))
    assert "resuming" in resumed, "no move was interrupted: the test did not test resumption"
    assert len(out["patients_found"]) == 3
    assert {s["study"] for s in out["studies"] if s["state"] == "retrieved"} == expected_staged
    staged = [s["instances_staged"] for s in out["studies"] if "instances_staged" in s]
    assert staged == [PER_STUDY] * len(wanted)
    planted = set(nhs) | {local_id} | {s.study_uid for s in wanted + unwanted}
    text = report.stdout + report.stderr + p.logs()
    for value in planted:
        assert value not in text, "patient data in a report or log"


def test_a_clinical_submission_drives_a_cohort_of_chest_imaging_around_each_swab(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """``smartbox clinical submit --cohort``: each patient of a valid row with a swab result
    becomes a cohort row, chest imaging from ``swab_days_before`` the first swab to
    ``swab_days_after`` the last; invalid rows drive nothing. Exactly the studies in those
    windows are retrieved and staged."""
    from helpers.clinical import NHS_A, NHS_B, NHS_C, identified, write_csv

    p = pipeline
    # swab of A on 2020-04-02 (and 2020-04-09), of C on 2020-05-10; B's row is invalid
    wanted = [
        _study(21, NHS_A, "20200320", "CT CHEST"),  # 13 days before the first swab
        _study(22, NHS_A, "20200505", "XR CHEST", body_part="CHEST"),  # 26 days after the last
        _study(23, NHS_C, "20200512", "CT THORAX"),
    ]
    unwanted = [
        _study(24, NHS_A, "20200310", "CT CHEST"),  # 23 days before
        _study(25, NHS_A, "20200615", "CT CHEST"),  # long after
        _study(26, NHS_C, "20200511", "CT HEAD"),  # in the window, not chest
        _study(27, NHS_B, "20200402", "CT CHEST"),  # B's row is held back: not retrieved
    ]
    p.add_trust(CODE, quiet_seconds=1)
    orthanc = Orthanc(
        tmp_path / "orthanc",
        f"{CODE}_PACS",
        {
            "smartbox": (f"SMARTBOX_{CODE}", "127.0.0.1", p.trusts[CODE]),
            "cohort": ("SMARTBOX_QR", "127.0.0.1", 1),
        },
    ).start()
    trust_file = p.root / "trusts" / f"{CODE}.toml"
    table = _retrieve_table(orthanc.dicom_port).replace(
        "max_attempts = 20\n", "max_attempts = 20\nswab_days_before = 14\nswab_days_after = 28\n"
    )
    trust_file.write_text(trust_file.read_text() + table)
    try:
        for i, study in enumerate(wanted + unwanted):
            orthanc.upload(study.write(tmp_path / f"s{i}"))
        declare_topology(p)
        p.start(f"receiver-{CODE}", "receive", "--trust", CODE)
        wait_dicom_port(p, CODE)
        p.start("anonymiser", "anonymise")

        rows = [
            identified(NHS_A, swab_2_date="2020-04-09", swab_2_result="Negative"),
            identified(NHS_B, swab_1_date="2021-02-30"),  # impossible date: held back
            identified(
                NHS_C,
                swab_1_date="2020-05-10",
                admission_date="2020-05-09",
                discharge_date="2020-05-30",
            ),
        ]
        clinical = write_csv(tmp_path / "clinical.csv", rows)
        out = p.run_cli("clinical", "submit", "--trust", CODE, "--cohort", str(clinical))
        assert out.returncode == 3, out.stdout + out.stderr  # one row held back
        [line] = [ln for ln in out.stdout.splitlines() if ln.startswith("cohort ")]
        assert line.endswith(": 2 patients with a swab result queued for retrieval"), line
        cohort_id = line.split()[1].rstrip(":")

        p.start("cohort", "cohort", "run", "--trust", CODE)
        wait_for(lambda: cohort_status(p, CODE, cohort_id)["done"], 240, "the cohort", 1)
        names = Pseudonymiser(RegionalKey.from_env({"SMARTBOX_PSEUDONYM_KEY": KEY}), CODE, 1)
        expected = {names.uid(s.study_uid) for s in wanted}
        wait_for(lambda: staged_studies(p, CODE) >= expected, 120, "the studies staged", 0.5)
        time.sleep(3)  # past the quiet period: anything extra would show now
    finally:
        orthanc.stop()
    assert staged_studies(p, CODE) == expected
    status = cohort_status(p, CODE, cohort_id)
    assert status["patients"] == {"queried": 2}, status
    studies = status["studies"]  # a move whose instances all landed before its answer was
    # lost (a loaded machine) ends already_received: fetched once either way
    assert studies.get("retrieved", 0) + studies.get("already_received", 0) == 3, status
    assert studies.get("filtered") == 1, status  # the head CT; the rest never matched
    text = p.logs() + out.stdout + out.stderr
    for value in (NHS_A, NHS_B, NHS_C, *(s.study_uid for s in wanted + unwanted)):
        assert value not in text, "patient data in a log or the command's output"
