"""Clinical intake without servers: validation, pseudonymisation (the images' pseudonym and date
shift, by the anonymiser's own code), identifiers dropped, and the in-process path from a
submitted file to the national archive, linked to the patient's studies."""

from __future__ import annotations

import io
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from helpers.clinical import (
    NHS_A,
    NHS_B,
    NHS_BAD,
    PLANTED_DOB,
    identified,
    planted,
    write_csv,
    write_json,
)
from helpers.export import ExportRig, stage_study
from helpers.receiver_env import make_trust

import schemas
from consumers.clinical import national
from consumers.clinical.cohort import swab_patients
from consumers.clinical.rows import Row, read_rows
from consumers.clinical.stage import ClinicalStage
from consumers.clinical.submit import prepare, publish, report
from consumers.clinical.validate import ValidRow, check_row
from consumers.deid import Deidentifier
from consumers.deid.policy import PolicyBuilder
from smartbox import layout
from smartbox.bus import MemoryBus
from smartbox.errors import ConfigError
from smartbox.keys import RegionalKey
from smartbox.store import LocalStore
from smartbox.synthetic import make_ct_study

KEY = RegionalKey(b"clinical-unit-tests-" + b"3" * 20)
TODAY = date(2026, 12, 1)


def problems(fields: dict) -> list[tuple[str, str]]:
    rows = read_rows(write_csv(Path(_tmp()) / "one.csv", [fields]))
    checked = check_row(rows[0], TODAY)
    assert not isinstance(checked, ValidRow), "the row should have been held back"
    return [(p.field, p.reason) for p in checked]


_TMP: list[Path] = []


def _tmp() -> Path:
    return _TMP[-1]


@pytest.fixture(autouse=True)
def _tmpdir(tmp_path: Path) -> None:
    _TMP.append(tmp_path)


# --- validation ------------------------------------------------------------------------------
def test_a_complete_row_is_valid_and_parsed() -> None:
    [row] = read_rows(write_csv(_tmp() / "ok.csv", [identified(NHS_A)]))
    checked = check_row(row, TODAY)
    assert isinstance(checked, ValidRow)
    assert checked.number == 2  # the header is row 1
    assert checked.nhs_number == NHS_A
    assert checked.swabs == ((date(2020, 4, 2), "positive"),)
    assert checked.sex == "F" and checked.comorbidities == ("diabetes", "hypertension")
    # age at the index date (the earliest of swab and admission), from the date of birth
    assert checked.age == 70


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"nhs_number": NHS_BAD}, ("nhs_number", "nhs_number_checksum")),
        ({"swab_1_date": "2021-02-30"}, ("swab_1_date", "date_invalid")),
        ({"admission_date": "31/04/2020"}, ("admission_date", "date_invalid")),
        ({"swab_1_date": "next tuesday"}, ("swab_1_date", "date_invalid")),
        ({"swab_1_result": "probably"}, ("swab_1_result", "value_unknown")),
        ({"swab_1_date": None, "swab_1_result": None}, ("swab_1_date", "required")),
        ({"swab_1_result": None}, ("swab_1_date", "swab_incomplete")),
        ({"nhs_number": None, "local_patient_id": None}, ("nhs_number", "patient_missing")),
        ({"discharge_date": "2030-01-01"}, ("discharge_date", "date_in_future")),
        ({"admission_date": "1850-01-01"}, ("admission_date", "date_out_of_range")),
        ({"discharge_date": "2020-03-01"}, ("discharge_date", "date_order")),
        ({"date_of_birth": "2020-05-01"}, ("admission_date", "date_order")),
        ({"sex": "sometimes"}, ("sex", "value_unknown")),
        ({"ethnicity": "Q"}, ("ethnicity", "value_unknown")),
        ({"outcome": "went home"}, ("outcome", "value_unknown")),
        ({"comorbidities": "diabetes;gout"}, ("comorbidities", "value_unknown")),
        ({"comorbidities": "diabetes;diabetes"}, ("comorbidities", "duplicate_value")),
        ({"date_of_birth": None, "age": "seventy"}, ("age", "invalid_type")),
        ({"date_of_birth": None, "age": "131"}, ("age", "out_of_range")),
        (
            {"swab_2_date": "2020-04-09", "swab_2_result": "maybe"},
            ("swab_2_result", "value_unknown"),
        ),
    ],
)
def test_each_kind_of_bad_row_is_held_back_with_its_field_and_reason(
    fields: dict, expected: tuple[str, str]
) -> None:
    found = problems(identified(NHS_A, **fields))
    assert expected in found
    # never a value in what is reported
    shown = json.dumps(found)
    for value in [*planted(identified(NHS_A)), *(str(v) for v in fields.values() if v)]:
        if len(value) > 3:
            assert value not in shown


def test_every_problem_of_a_row_is_reported_not_only_the_first() -> None:
    found = problems(
        identified(NHS_BAD, swab_1_result="maybe", sex="x", admission_date="2020-13-01")
    )
    assert {f for f, _ in found} >= {"nhs_number", "swab_1_result", "sex", "admission_date"}


def test_a_local_id_alone_names_the_patient() -> None:
    [row] = read_rows(write_csv(_tmp() / "l.csv", [identified(NHS_A, nhs_number=None)]))
    checked = check_row(row, TODAY)
    assert isinstance(checked, ValidRow) and checked.nhs_number is None


def test_file_level_mistakes_are_one_line_without_the_values(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("nhs_number,swab_1_reslt,Smith John\n" + NHS_A + ",positive,x\n")
    with pytest.raises(ConfigError) as exc:
        read_rows(bad)
    assert "swab_1_result" in str(exc.value)  # a hint at the known column
    assert "reslt" not in str(exc.value)  # the name itself is never echoed
    weird = tmp_path / "noheader.csv"
    weird.write_text("Smith John,1 High Street\n")
    with pytest.raises(ConfigError) as exc2:
        read_rows(weird)
    assert "Smith" not in str(exc2.value) and "High" not in str(exc2.value)
    with pytest.raises(ConfigError):
        read_rows(tmp_path / "missing.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError):
        read_rows(tmp_path / "bin.csv")


def test_json_files_are_checked_like_csv(tmp_path: Path) -> None:
    good = {
        "nhs_number": NHS_A,
        "swabs": [{"date": "2020-04-02", "result": "negative"}],
        "comorbidities": ["Asthma"],
        "age": 44,
    }
    bad = {"nhs_number": NHS_A, "swabs": [{"date": "2020-02-30", "result": "negative"}]}
    rows = read_rows(write_json(tmp_path / "r.json", [good, bad, "not an object"]))
    assert isinstance(check_row(rows[0], TODAY), ValidRow)
    assert [(p.field, p.reason) for p in check_row(rows[1], TODAY)] == [  # type: ignore[union-attr]
        ("swab_1_date", "date_invalid")
    ]
    assert [(p.field, p.reason) for p in check_row(rows[2], TODAY)] == [  # type: ignore[union-attr]
        ("row", "invalid_type")
    ]
    with pytest.raises(ConfigError):
        read_rows(write_json(tmp_path / "k.json", [{**good, "surname": "x"}]))


# --- pseudonymisation: the images' own pseudonym and date shift -----------------------------
def _image(nhs: str, shift_env: str | None) -> tuple[str, date, date]:
    """(staged PatientID, original StudyDate, staged StudyDate) of a synthetic CT study
    de-identified by the anonymiser's own engine for trust RCL."""
    env = {"SMARTBOX_DEID_MAX_DATE_SHIFT_DAYS": shift_env} if shift_env else {}
    policy = PolicyBuilder.from_env(env).for_trust(make_trust("RCL"))
    study = make_ct_study(5, series=1, per_series=1, nhs_number=nhs)
    ds = study.datasets[0]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    result = Deidentifier(KEY, policy).process(buf.getvalue())
    assert result.ok and result.data is not None
    out = pydicom.dcmread(io.BytesIO(result.data))
    day = lambda v: datetime.strptime(str(v), "%Y%m%d").date()  # noqa: E731
    return str(out.PatientID), day(ds.StudyDate), day(out.StudyDate)


@pytest.mark.parametrize("shift_env", [None, "7"])
def test_record_pseudonym_and_date_shift_are_the_images(
    tmp_path: Path, shift_env: str | None
) -> None:
    env = {"SMARTBOX_DEID_MAX_DATE_SHIFT_DAYS": shift_env} if shift_env else {}
    path = write_csv(tmp_path / "c.csv", [identified(NHS_A)])
    sub = prepare(path, make_trust("RCL"), KEY, PolicyBuilder.from_env(env), TODAY)
    [made] = sub.records
    record = made.record
    patient_id, study_date, staged_date = _image(NHS_A, shift_env)
    assert record["patient"] == patient_id
    image_shift = (staged_date - study_date).days
    swab_shift = (date.fromisoformat(record["swabs"][0]["date"]) - date(2020, 4, 2)).days
    assert swab_shift == image_shift != 0
    assert (date.fromisoformat(record["admission_date"]) - date(2020, 4, 1)).days == image_shift
    if shift_env:
        assert abs(image_shift) <= 7  # the region-wide bound, the same for both


def test_local_id_pseudonym_is_the_images_for_a_patient_without_nhs_number(tmp_path: Path) -> None:
    policies = PolicyBuilder()
    trust = make_trust("RCL")
    path = write_csv(
        tmp_path / "c.csv", [identified(NHS_A, nhs_number=None, local_patient_id="LOC77")]
    )
    [made] = prepare(path, trust, KEY, policies, TODAY).records
    engine = Deidentifier(KEY, policies.for_trust(trust))
    assert made.record["patient"] == engine.patient_pseudonym(None, "LOC77")[0]
    assert made.record["patient"] != engine.patient_pseudonym(NHS_A, None)[0]


def test_no_identifier_survives_into_the_record(tmp_path: Path) -> None:
    rows = [identified(NHS_A), identified(NHS_B, record_key="EPISODE-77123")]
    sub = prepare(
        write_csv(tmp_path / "c.csv", rows), make_trust("RCL"), KEY, PolicyBuilder(), TODAY
    )
    assert len(sub.records) == 2 and not sub.held
    text = json.dumps([m.record for m in sub.records])
    for row in rows:
        for value in planted(row):
            assert value not in text, "a planted identifier reached a record"
    for m in sub.records:
        schemas.validate_document("clinical.record", m.record)
        assert set(m.record) <= set(schemas.load("clinical.record", 1)["properties"])
        assert "date_of_birth" not in m.record and m.record["age"] == 70


def test_age_is_capped_and_an_explicit_age_is_used_without_a_birth_date(tmp_path: Path) -> None:
    rows = [
        identified(NHS_A, date_of_birth="1920-01-01"),
        identified(NHS_B, date_of_birth=None, age="45"),
    ]
    sub = prepare(
        write_csv(tmp_path / "c.csv", rows), make_trust("RCL"), KEY, PolicyBuilder(), TODAY
    )
    assert [m.record["age"] for m in sub.records] == [90, 45]


def test_record_ids_are_deterministic_and_a_record_given_twice_is_held_back(tmp_path: Path) -> None:
    rows = [identified(NHS_A), identified(NHS_A, swab_1_result="negative"), identified(NHS_B)]
    path = write_csv(tmp_path / "c.csv", rows)
    first = prepare(path, make_trust("RCL"), KEY, PolicyBuilder(), TODAY)
    again = prepare(path, make_trust("RCL"), KEY, PolicyBuilder(), TODAY)
    assert first.submission_id == again.submission_id
    assert [m.record for m in first.records] == [m.record for m in again.records]
    assert [(p.field, p.reason) for p in first.held[3]] == [("record_key", "duplicate_record")]
    # another record key is another record of the same patient
    rows[1]["record_key"] = "EPISODE-2"
    other = prepare(
        write_csv(tmp_path / "d.csv", rows), make_trust("RCL"), KEY, PolicyBuilder(), TODAY
    )
    assert len(other.records) == 3 and len({m.record["record_id"] for m in other.records}) == 3


def test_report_lists_every_held_back_row(tmp_path: Path) -> None:
    rows = [identified(NHS_A), identified(NHS_BAD), identified(NHS_B, swab_1_date="2021-02-30")]
    path = write_csv(tmp_path / "c.csv", rows)
    sub = prepare(path, make_trust("RCL"), KEY, PolicyBuilder(), TODAY)
    out = io.StringIO()
    report(path, sub, out)
    lines = out.getvalue().splitlines()
    assert f"{path}: row 3: field nhs_number: nhs_number_checksum" in lines
    assert f"{path}: row 4: field swab_1_date: date_invalid" in lines
    assert lines[-1].endswith(
        "3 rows: 1 accepted, 2 held back (date_invalid 1, nhs_number_checksum 1)"
    )
    for value in planted(rows[1]):
        assert value not in out.getvalue()


def test_swab_patients_for_cohorts(tmp_path: Path) -> None:
    rows = [
        identified(NHS_A, swab_2_date="2020-03-20", swab_2_result="negative"),
        identified(NHS_BAD),
        identified(NHS_B, nhs_number=None, local_patient_id="LOC9"),
    ]
    found = swab_patients(write_csv(tmp_path / "c.csv", rows), TODAY)
    assert [(p.row, p.nhs_number, p.local_patient_id) for p in found] == [
        (2, NHS_A, rows[0]["local_patient_id"]),
        (4, None, "LOC9"),
    ]
    assert found[0].swab_dates == (date(2020, 3, 20), date(2020, 4, 2))
    assert NHS_A not in repr(found)


# --- in process: submitted, staged, exported in the images' batch, linked nationally ---------
def test_records_travel_with_the_images_and_are_linked_by_pseudonym(tmp_path: Path) -> None:
    rig = ExportRig(LocalStore(tmp_path / "s3"), LocalStore(tmp_path / "national"))
    trust = make_trust("RCL")
    path = write_csv(tmp_path / "c.csv", [identified(NHS_A), identified(NHS_BAD)])
    sub = prepare(path, trust, KEY, PolicyBuilder(), TODAY)
    patient = sub.records[0].record["patient"]
    # a staged study of the same patient (pseudonym), recorded by the exporter
    study = stage_study(rig.store, "RCL", 2, patient=patient)
    rig.bus.publish(study)
    rig.deliver("exporter", rig.exporter.handle)
    publish(rig.bus, "RCL", sub)
    publish(rig.bus, "RCL", sub)  # the same file submitted twice
    stage = ClinicalStage(rig.store)
    handled = rig.deliver("clinical", stage.handle)
    assert [m["schema"] for m in handled].count("clinical.arrived") == 2
    staged = [
        k
        for k in rig.store.list_keys("staging", "RCL/_clinical/")
        if layout.is_clinical_record_key(k)
    ]
    assert len(staged) == 1  # no duplicate
    rig.window()
    [batch] = rig.batches
    assert batch["body"]["study_count"] == 1 and len(batch["body"]["clinical"]) == 1
    assert batch["version"] == 3  # export.batch v3: it carries clinical records
    manifest = json.loads(rig.national.get_bytes("national", batch["body"]["manifest_key"]))
    assert manifest["version"] == 2 and manifest["clinical"][0]["patient"] == patient
    [receipt] = rig.receipts
    assert receipt["version"] == 3
    assert receipt["body"]["clinical"] == [
        {"export_id": manifest["clinical"][0]["export_id"], "status": "accepted"}
    ]
    links = national.patient_links(rig.national, "archive", patient)
    assert links["studies"] == [study["body"]["study_uid"]]
    [linked] = links["clinical"].values()
    assert linked == sub.records[0].record
    # acknowledged: nothing left to send; a second window exports nothing clinical
    rig.window()
    assert len(rig.batches) == 1
    state = json.loads(
        rig.store.get_bytes(
            "staging", layout.clinical_state_key("RCL", manifest["clinical"][0]["export_id"])
        )
    )
    assert state["state"] == "acked"


def test_a_batch_of_images_alone_is_still_v1_with_the_same_id(tmp_path: Path) -> None:
    rig = ExportRig(LocalStore(tmp_path / "s3"), LocalStore(tmp_path / "national"))
    rig.bus.publish(stage_study(rig.store, "RCL", 1))
    rig.deliver("exporter", rig.exporter.handle)
    rig.window()
    [batch] = rig.batches
    manifest = json.loads(rig.national.get_bytes("national", batch["body"]["manifest_key"]))
    assert manifest["version"] == 1 and "clinical" not in manifest
    assert "clinical" not in batch["body"]
    # the messages too: export.batch v2 as before clinical intake, answered by a v2 receipt
    # which the exporter acts on (the study acknowledged)
    [receipt] = rig.receipts
    assert (batch["version"], receipt["version"]) == (2, 2)
    [record] = [
        json.loads(rig.store.get_bytes("staging", k))
        for k in rig.store.list_keys("staging", "_export/studies/RCL/")
    ]
    assert record["state"] == "acked"
    schemas.validate_document("national.batch", manifest, 1)


def test_a_withdrawn_patients_record_is_not_staged(tmp_path: Path) -> None:
    from consumers.withdraw import withdraw

    store = LocalStore(tmp_path / "s3")
    store.ensure_bucket("staging")
    bus = MemoryBus()
    sub = prepare(
        write_csv(tmp_path / "c.csv", [identified(NHS_A)]),
        make_trust("RCL"),
        KEY,
        PolicyBuilder(),
        TODAY,
    )
    withdraw(store, "staging", "RCL", sub.records[0].record["patient"])
    publish(bus, "RCL", sub)
    rig = ExportRig(store, LocalStore(tmp_path / "n"), bus=bus)
    rig.deliver("clinical", ClinicalStage(store).handle)
    assert not [
        k for k in store.list_keys("staging", "RCL/_clinical/") if layout.is_clinical_record_key(k)
    ]


def test_dates_in_the_future_relative_to_today(tmp_path: Path) -> None:
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    [row] = read_rows(write_csv(tmp_path / "c.csv", [identified(NHS_A, discharge_date=tomorrow)]))
    checked = check_row(row)
    assert not isinstance(checked, ValidRow)
    assert ("discharge_date", "date_in_future") in [(p.field, p.reason) for p in checked]
    assert PLANTED_DOB  # planted in every row above


def test_row_repr_hides_values() -> None:
    row = Row(2, {"nhs_number": NHS_A})
    assert NHS_A not in repr(row)


def test_an_nhs_number_given_as_the_local_id_is_resolved_as_the_images_do(tmp_path: Path) -> None:
    """Where the trust's NHS number is in PatientID, a valid NHS number in local_patient_id is
    the NHS number (as the images' PatientID is); elsewhere it is a local ID."""
    policies = PolicyBuilder()
    row = identified(NHS_A, nhs_number=None, local_patient_id=NHS_A)
    path = write_csv(tmp_path / "c.csv", [row])
    in_patient_id = make_trust("RCL")
    [made] = prepare(path, in_patient_id, KEY, policies, TODAY).records
    assert made.record["patient"] == _image(NHS_A, None)[0]
    elsewhere = make_trust("RCL", nhs_number_attribute="OtherPatientIDs")
    [local] = prepare(path, elsewhere, KEY, policies, TODAY).records
    engine = Deidentifier(KEY, policies.for_trust(elsewhere))
    assert local.record["patient"] == engine.patient_pseudonym(None, NHS_A)[0]
    assert local.record["patient"] != made.record["patient"]


def test_a_withdrawal_removes_exported_records_nationally_and_unexported_ones_locally(
    tmp_path: Path,
) -> None:
    from consumers.withdraw import withdraw

    rig = ExportRig(LocalStore(tmp_path / "s3"), LocalStore(tmp_path / "national"))
    trust = make_trust("RCL")
    first = prepare(
        write_csv(tmp_path / "a.csv", [identified(NHS_A)]), trust, KEY, PolicyBuilder(), TODAY
    )
    patient = first.records[0].record["patient"]
    publish(rig.bus, "RCL", first)
    stage = ClinicalStage(rig.store)
    rig.deliver("clinical", stage.handle)
    rig.window()
    assert national.patient_links(rig.national, "archive", patient)["clinical"]
    # a changed row (a later version of the record), staged but not yet exported
    later = prepare(
        write_csv(
            tmp_path / "b.csv", [identified(NHS_A, outcome="died", date_of_death="2020-05-01")]
        ),
        trust,
        KEY,
        PolicyBuilder(),
        TODAY,
    )
    publish(rig.bus, "RCL", later)
    rig.deliver("clinical", stage.handle)
    report = withdraw(rig.store, "staging", "RCL", patient)
    assert (report.clinical_removed, report.clinical_queued) == (1, 1)
    rig.window()
    batch = rig.batches[-1]
    assert batch["body"]["clinical_withdrawals"] and "clinical" not in batch["body"]
    assert rig.receipts[-1]["body"]["clinical_withdrawals"][0]["status"] == "applied"
    assert national.patient_links(rig.national, "archive", patient)["clinical"] == {}
    assert not [k for k in rig.national.list_keys("archive") if "/_clinical/" in k]
    assert not list(rig.store.list_keys("staging", layout.clinical_withdrawal_prefix("RCL")))
    # the unexported version was removed from staging, never exported
    staged = [
        k
        for k in rig.store.list_keys("staging", "RCL/_clinical/")
        if layout.is_clinical_record_key(k)
    ]
    assert len(staged) == 1  # the exported version's staged copy (kept, as studies' are)
    rig.window()  # nothing more to send
    assert rig.batches[-1] is batch


def test_patient_links_follow_a_chain_of_rotations_both_ways(tmp_path: Path) -> None:
    """A -> B -> C (two rotations) and D -> C (two old pseudonyms merged): any of them gives
    the records of all four, each under its own pseudonym; an unrelated one stays apart."""
    from smartbox.store import put_json

    store = LocalStore(tmp_path / "n")
    store.ensure_bucket("archive")
    for old, new in (("a" * 32, "b" * 32), ("b" * 32, "c" * 32), ("d" * 32, "c" * 32)):
        put_json(store, "archive", layout.national_link_key("patient", old), {"to": new})
        store.put_bytes("archive", layout.national_link_reverse_key("patient", new, old), b"")
    for name in ("a", "b", "c", "d", "e"):
        pseudonym = name * 32
        store.put_bytes(
            "archive", layout.national_patient_study_key(pseudonym, f"2.25.{ord(name)}"), b""
        )
    answers = [national.patient_links(store, "archive", n * 32) for n in "abcd"]
    assert all(a == answers[0] for a in answers)
    assert answers[0]["patient"] == "c" * 32
    assert answers[0]["pseudonyms"] == ["c" * 32, "b" * 32, "d" * 32, "a" * 32]
    assert answers[0]["by_pseudonym"]["a" * 32] == {"studies": ["2.25.97"], "clinical": []}
    assert len(answers[0]["studies"]) == 4
    assert national.patient_links(store, "archive", "e" * 32)["pseudonyms"] == ["e" * 32]


def test_patient_links_without_reverse_markers_still_follow_the_old_pseudonym(
    tmp_path: Path,
) -> None:
    """A link applied before reverse markers existed: from the old pseudonym, both."""
    from smartbox.store import put_json

    store = LocalStore(tmp_path / "n")
    store.ensure_bucket("archive")
    old, new = "a" * 32, "b" * 32
    put_json(store, "archive", layout.national_link_key("patient", old), {"to": new})
    for name in (old, new):
        store.put_bytes(
            "archive", layout.national_patient_study_key(name, f"2.25.{ord(name[0])}"), b""
        )
    by_old = national.patient_links(store, "archive", old)
    assert by_old["pseudonyms"] == [new, old] and by_old["studies"] == ["2.25.97", "2.25.98"]
    assert national.patient_links(store, "archive", new)["pseudonyms"] == [new]
