"""A cohort retrieved by C-GET from a real archive (Orthanc, the Debian package): the archive
sends the instances back over the cohort process's own association, which passes each one on
to the trust's real receiver (``smartbox receive``) before answering it; the real anonymiser
then stages them. The trust keeps NHS numbers in OtherPatientIDs (its PatientID is the
hospital number), so a cohort row with an NHS number is matched on that attribute.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from helpers.cohort import cohort_status, orthanc_pipeline, retrieve_table, staged_studies
from helpers.dicom_relay import Relay
from helpers.pipeline import KEY, Pipeline
from helpers.receiver_e2e import declare_topology, wait_dicom_port
from helpers.receiver_orthanc import Orthanc
from helpers.util import wait_for
from pynetdicom import AE

from consumers.deid.pseudonyms import Pseudonymiser
from smartbox.keys import RegionalKey
from smartbox.synthetic import make_ct_study, make_nhs_number

CODE = "RTG"
PER_STUDY = 6  # 2 series x 3 instances


@pytest.fixture
def pipeline(tmp_path: Path, rabbitmq_url: str, namespace: str, s3_server) -> Iterator[Pipeline]:
    yield from orthanc_pipeline(tmp_path, rabbitmq_url, namespace, s3_server)


def _study(seed: int, hospital_id: str, nhs: str | None, day: str, description: str):
    study = make_ct_study(seed, series=2, per_series=3)
    for ds in study.datasets:
        ds.PatientID = hospital_id
        if nhs is None:
            ds.pop("OtherPatientIDs", None)
        else:
            ds.OtherPatientIDs = nhs
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
        ds.StudyDescription = description
    return study


def _get_table(archive_port: int) -> str:
    return retrieve_table(CODE, archive_port, method="C-GET")


def _failures(p: Pipeline) -> dict[str, float]:
    return {
        reason: p.metric("cohort", "smartbox_retrieve_failures_total", trust=CODE, reason=reason)
        for reason in ("move_incomplete", "move_failed", "association_failed")
    }


def _dataset_bytes(data: bytes) -> bytes:
    """A Part 10 file's data set, after its File Meta Information."""
    assert data[128:132] == b"DICM"
    meta_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR
    return data[144 + meta_length :]


def _push_as_retrieved(port: int, files: list[Path]) -> None:
    """Deliver instances as a C-GET cut short would have: with our Move Originator."""
    ae = AE(ae_title="SMARTBOX_QR")
    datasets = [pydicom.dcmread(f) for f in files]
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=f"SMARTBOX_{CODE}")
    assert assoc.is_established
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds, originator_aet="SMARTBOX_QR", originator_id=1)
            assert status.Status == 0x0000
    finally:
        assoc.release()


def test_a_cohort_is_retrieved_by_c_get_through_the_receiver_matched_on_other_patient_ids(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    p = pipeline
    rng = random.Random(21)
    nhs = [make_nhs_number(rng) for _ in range(3)]
    local_id = "RTG-LOCAL-3"
    wanted = [
        _study(31, "H0001", nhs[0], "20200315", "CT CHEST"),  # the NHS number only there
        _study(32, "H0001", nhs[0], "20201120", "CT THORAX"),  # partly delivered already
        _study(33, local_id, None, "20200402", "CT CHEST"),  # a row with a local ID
    ]
    unwanted = [
        _study(34, "H0001", nhs[0], "20200601", "CT HEAD"),  # not chest
        _study(35, nhs[1], None, "20200301", "CT CHEST"),  # NHS number only in PatientID
        _study(36, "H0002", nhs[2], "20200301", "CT CHEST"),  # patient not in the cohort
    ]
    port = p.add_trust(CODE, quiet_seconds=1, extra='nhs_number_attribute = "OtherPatientIDs"\n')
    orthanc = Orthanc(
        tmp_path / "orthanc",
        f"{CODE}_PACS",
        {"cohort": ("SMARTBOX_QR", "127.0.0.1", 1)},  # may C-FIND and C-GET; no destination
    ).start()
    trust_file = p.root / "trusts" / f"{CODE}.toml"
    text = trust_file.read_text().replace(
        f'allowed_callers = ["{CODE}_PACS"]', 'allowed_callers = ["SMARTBOX_QR"]'
    )
    trust_file.write_text(text + _get_table(orthanc.dicom_port))
    files = {}
    try:
        for i, study in enumerate(wanted + unwanted):
            files[study.study_uid] = study.write(tmp_path / f"s{i}")
            orthanc.upload(files[study.study_uid])

        check = p.run_cli("check-config")
        assert check.returncode == 0, check.stderr
        declare_topology(p)
        p.start(f"receiver-{CODE}", "receive", "--trust", CODE)
        wait_dicom_port(p, CODE)
        p.start("anonymiser", "anonymise")
        # two instances of the second study already held, as a C-GET cut short leaves them
        _push_as_retrieved(port, files[wanted[1].study_uid][:2])

        cohort_csv = tmp_path / "cohort.csv"
        cohort_csv.write_text(
            "nhs_number,patient_id,date_from,date_to\n"
            f"{nhs[0]},,2020-01-01,2020-12-31\n"
            f"{nhs[1]},,2020-01-01,2020-12-31\n"
            f",{local_id},2020-01-01,2020-12-31\n"
        )
        submitted = p.run_cli("cohort", "submit", "--trust", CODE, str(cohort_csv))
        assert submitted.returncode == 0, submitted.stderr
        cohort_id = submitted.stdout.split()[0]
        p.start("cohort", "cohort", "run", "--trust", CODE)

        wait_for(lambda: cohort_status(p, CODE, cohort_id)["done"], 240, "the cohort", 1)
        names = Pseudonymiser(RegionalKey.from_env({"SMARTBOX_PSEUDONYM_KEY": KEY}), CODE, 1)
        expected_staged = {names.uid(s.study_uid) for s in wanted}
        wait_for(lambda: staged_studies(p, CODE) >= expected_staged, 120, "the studies staged", 0.5)
        time.sleep(3)  # past the receiver's quiet period: anything extra would show now
        status = cohort_status(p, CODE, cohort_id)
        received = p.metric(f"receiver-{CODE}", "smartbox_instances_received_total", trust=CODE)

        # the same cohort again: everything is in the receiver's ledger, nothing is fetched
        again = p.run_cli("cohort", "submit", "--trust", CODE, str(cohort_csv))
        assert again.returncode == 0, again.stderr
        again_id = again.stdout.split()[0]
        wait_for(lambda: cohort_status(p, CODE, again_id)["done"], 120, "the second cohort", 1)
        time.sleep(2)
        again_status = cohort_status(p, CODE, again_id)
        received_again = p.metric(
            f"receiver-{CODE}", "smartbox_instances_received_total", trust=CODE
        )
    finally:
        orthanc.stop()

    # exactly the matching studies, each instance once, through the receiver
    assert staged_studies(p, CODE) == expected_staged
    assert status["studies"] == {"retrieved": 3, "filtered": 1}, status
    assert status["patients"] == {"queried": 3}, status
    assert received == PER_STUDY * len(wanted)
    for kind in ("identical", "new_version"):
        dup = p.metric(f"receiver-{CODE}", "smartbox_duplicate_instances_total", kind=kind)
        assert dup == 0, kind
    assert again_status["studies"] == {"already_received": 3, "filtered": 1}, again_status
    assert received_again == received
    cohort_log = "".join(f.read_text() for f in p.root.glob("cohort.*.log"))
    assert "resuming, 4 of 6 instances to move" in cohort_log
    assert p.metric("cohort", "smartbox_retrieve_instances_total", trust=CODE) == 16

    # marked retrieved (backfill) by our Move Originator, like a C-MOVE's sub-operations
    batches = [
        json.loads(p.read("quarantine", k)) for k in p.objects("quarantine") if "/batches/" in k
    ]
    assert batches and all(b["origin"] == "retrieved" for b in batches)
    assert all(b["move_originators"] == ["SMARTBOX_QR"] for b in batches)
    # passed on as received: the originals in quarantine hold the archive's data set bytes
    originals = {_dataset_bytes(f.read_bytes()) for s in wanted for f in files[s.study_uid]}
    held = [
        _dataset_bytes(p.read("quarantine", k))
        for k in p.objects("quarantine", f"{CODE}/")
        if k.endswith(".dcm")
    ]
    assert len(held) == PER_STUDY * len(wanted)
    assert set(held) == originals

    text = p.logs()
    for value in [*nhs, local_id, "H0001", *(s.study_uid for s in wanted + unwanted)]:
        assert value not in text, "patient data in a log"


def test_a_c_get_cut_by_the_receiver_s_death_fails_those_instances_and_fetches_only_them(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The receiver is killed (SIGKILL) in the middle of a C-GET: what it had answered is
    kept, every sub-operation after is answered as failed to the archive, and the next
    attempt asks only for the instances its ledger lacks, once it is back."""
    p = pipeline
    nhs = make_nhs_number(random.Random(22))
    wanted = [
        _study(41, "H0041", nhs, "20200315", "CT CHEST"),
        _study(42, "H0041", nhs, "20200415", "CT CHEST"),
    ]
    p.add_trust(CODE, quiet_seconds=1, extra='nhs_number_attribute = "OtherPatientIDs"\n')
    orthanc = Orthanc(
        tmp_path / "orthanc", f"{CODE}_PACS", {"cohort": ("SMARTBOX_QR", "127.0.0.1", 1)}
    ).start()
    slow_archive = Relay(("127.0.0.1", orthanc.dicom_port), response_delay=0.2)
    trust_file = p.root / "trusts" / f"{CODE}.toml"
    text = trust_file.read_text().replace(
        f'allowed_callers = ["{CODE}_PACS"]', 'allowed_callers = ["SMARTBOX_QR"]'
    )
    trust_file.write_text(text + _get_table(slow_archive.port))
    files = {}
    receiver = f"receiver-{CODE}"
    try:
        for i, study in enumerate(wanted):
            files[study.study_uid] = study.write(tmp_path / f"s{i}")
            orthanc.upload(files[study.study_uid])
        declare_topology(p)
        p.start(receiver, "receive", "--trust", CODE)
        wait_dicom_port(p, CODE)
        p.start("anonymiser", "anonymise")
        cohort_csv = tmp_path / "cohort.csv"
        cohort_csv.write_text(f"nhs_number,date_from,date_to\n{nhs},2020-01-01,2020-12-31\n")
        submitted = p.run_cli("cohort", "submit", "--trust", CODE, str(cohort_csv))
        assert submitted.returncode == 0, submitted.stderr
        cohort_id = submitted.stdout.split()[0]
        p.start("cohort", "cohort", "run", "--trust", CODE)

        def received() -> float:
            return p.metric(receiver, "smartbox_instances_received_total", trust=CODE)

        wait_for(lambda: 2 <= received() <= PER_STUDY - 2, 120, "a C-GET under way", 0.05)
        p.kill(receiver)  # SIGKILL in the middle of a C-GET
        # the archive is told of the failures: the attempt is incomplete, retried
        wait_for(lambda: sum(_failures(p).values()) >= 1, 120, "the cut C-GET to count failed")
        p.start(receiver, "receive", "--trust", CODE)
        wait_dicom_port(p, CODE)
        wait_for(lambda: cohort_status(p, CODE, cohort_id)["done"], 240, "the cohort", 1)
        names = Pseudonymiser(RegionalKey.from_env({"SMARTBOX_PSEUDONYM_KEY": KEY}), CODE, 1)
        expected_staged = {names.uid(s.study_uid) for s in wanted}
        wait_for(lambda: staged_studies(p, CODE) >= expected_staged, 120, "the studies staged", 0.5)
        time.sleep(3)
        failures = _failures(p)
    finally:
        orthanc.stop()
        slow_archive.close()

    assert staged_studies(p, CODE) == expected_staged
    assert cohort_status(p, CODE, cohort_id)["studies"] == {"retrieved": 2}
    assert failures["move_incomplete"] + failures["move_failed"] >= 1, failures
    cohort_log = "".join(f.read_text() for f in p.root.glob("cohort.*.log"))
    assert "resuming" in cohort_log  # only the missing instances asked for again
    # every instance once in quarantine, as the archive holds it
    originals = {_dataset_bytes(f.read_bytes()) for s in wanted for f in files[s.study_uid]}
    held = [
        _dataset_bytes(p.read("quarantine", k))
        for k in p.objects("quarantine", f"{CODE}/")
        if k.endswith(".dcm")
    ]
    assert sorted(held) == sorted(originals)
