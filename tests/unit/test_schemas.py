import copy
from pathlib import Path

import pytest

import schemas
from smartbox.errors import SchemaError

ARRIVED = {
    "study_key": "a" * 32,
    "bucket": "quarantine",
    "batch_key": "RTK/" + "a" * 32 + "/batches/" + "b" * 32 + ".json",
    "batch_id": "b" * 32,
    "instance_count": 3,
    "bytes": 1024,
    "modalities": ["CT"],
    "amendment": False,
    "first_received_at": "2026-11-28T10:00:00.000Z",
    "last_received_at": "2026-11-28T10:00:05.000Z",
}


def arrived() -> dict:
    return schemas.make_message(
        "study.arrived", trust="RTK", producer="receiver/RTK@box1", body=ARRIVED
    )


def test_every_schema_file_is_loaded_and_listed() -> None:
    files = {p.name for p in Path(schemas.__file__).parent.glob("*.schema.json")}
    expected = {schemas.schema_file(n, v) for n, v in schemas.SCHEMAS.items()}
    expected |= {schemas.schema_file(n, v) for n, vs in schemas.SUPERSEDED.items() for v in vs}
    expected |= {schemas.schema_file(n, v) for n, v in schemas.DOCUMENTS.items()}
    assert expected | {"envelope.v1.schema.json"} == files
    for name, version in schemas.SCHEMAS.items():
        assert schemas.load(name, version)["$schema"].endswith("2020-12/schema")


def test_valid_message_passes_and_lineage_flows() -> None:
    parent = arrived()
    schemas.validate(parent)
    child = schemas.make_message(
        "study.staged",
        trust="RTK",
        producer="anonymiser@box1",
        parents=[parent],
        body={
            "study_key": "a" * 32,
            "batch_id": "b" * 32,
            "study_uid": "2.25.12345678901234567890",
            "bucket": "staging",
            "manifest_key": "RTK/2.25.1/manifest-" + "b" * 32 + ".json",
            "instances_in": 3,
            "instances_staged": 2,
            "instances_held_back": 1,
            "held_back_reasons": {"burned_in_annotation": 1},
            "bytes_staged": 10,
            "amendment": False,
        },
    )
    schemas.validate(child)
    assert child["parent_ids"] == [parent["message_id"]]
    assert child["correlation_id"] == parent["correlation_id"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("body", "instance_count"), "JOHN^SMITH"),
        (("body", "study_key"), "1.2.826.0.1.3680043.2.1125.1"),  # an original UID is refused
        (("trust",), "rtk"),
        (("body", "modalities"), ["C T"]),
        (("schema",), "study.deleted"),
    ],
)
def test_invalid_messages_rejected_without_echoing_values(path: tuple, value: object) -> None:
    msg = copy.deepcopy(arrived())
    target = msg
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    with pytest.raises(SchemaError) as err:
        schemas.validate(msg)
    assert str(value) not in str(err.value)


def test_extra_body_field_rejected() -> None:
    msg = arrived()
    msg["body"]["patient_name"] = "SMITH^JOHN"
    with pytest.raises(SchemaError):
        schemas.validate(msg)


def staged_with_reasons(reasons: dict[str, int]) -> dict:
    return schemas.make_message(
        "study.staged",
        trust="RTK",
        producer="anonymiser@box1",
        body={
            "study_key": "a" * 32,
            "batch_id": "b" * 32,
            "study_uid": "2.25.12345678901234567890",
            "bucket": "staging",
            "manifest_key": "RTK/2.25.1/manifest-" + "b" * 32 + ".json",
            "instances_in": sum(reasons.values()),
            "instances_staged": 0,
            "instances_held_back": sum(reasons.values()),
            "held_back_reasons": reasons,
            "bytes_staged": 10,
            "amendment": False,
        },
    )


def test_the_reason_enum_is_generated_from_the_one_vocabulary() -> None:
    from consumers.deid.reasons import DETAIL_PATTERN, Reason, main, schema_values

    defs = schemas.load("envelope", 1)["$defs"]
    assert defs["reason"]["enum"] == schema_values() == sorted(r.value for r in Reason)
    assert defs["reason_detail"]["pattern"] == DETAIL_PATTERN
    assert main(["--check"]) == 0
    # every reason any stage can produce is a valid study.staged, all at once
    schemas.validate(staged_with_reasons({r.value: 1 for r in Reason}))


@pytest.mark.parametrize("reason", ["deid_error:NotImplementedError", "unknown", "made_up"])
def test_reasons_outside_the_vocabulary_are_rejected(reason: str) -> None:
    with pytest.raises(SchemaError):
        schemas.validate(staged_with_reasons({reason: 1}))


def test_a_held_back_detail_in_a_study_manifest_is_a_token_never_text() -> None:
    manifest = {
        "trust": "RTK",
        "study_uid": "2.25.1234",
        "batch_id": "b" * 32,
        "amendment": False,
        "instances": [],
        "held_back": [{"source": "x.dcm", "reason": "deid_error", "detail": "KeyError"}],
    }
    schemas.validate_document("staging.study", manifest)
    manifest["held_back"][0]["detail"] = "Invalid value for VR PN: 'SMITH^JOHN'"
    with pytest.raises(SchemaError):
        schemas.validate_document("staging.study", manifest)


# --- export.batch / export.receipt: v3 adds the clinical records, v2 stays as it was ---------
def _batch_body(**extra: object) -> dict:
    return {
        "batch_id": "c" * 32,
        "bucket": "national",
        "manifest_key": "_batches/RTK/" + "c" * 32 + ".json",
        "manifest_sha256": "d" * 64,
        "signature": "e" * 128,
        "key_id": "f" * 16,
        "study_count": 1,
        "instance_count": 2,
        "bytes": 100,
        "studies": [
            {
                "export_id": "a" * 32,
                "study_uid": "2.25.1234567890",
                "instance_count": 2,
                "attempt": 1,
            }
        ],
        "withdrawals": [],
        **extra,
    }


def _receipt_body(**extra: object) -> dict:
    return {
        "batch_id": "c" * 32,
        "status": "accepted",
        "studies": [{"export_id": "a" * 32, "study_uid": "2.25.1234567890", "status": "accepted"}],
        "withdrawals": [],
        "instances_expected": 2,
        "instances_verified": 2,
        "checksum_failures": 0,
        "missing": 0,
        "stored_bucket": "archive",
        **extra,
    }


CLINICAL = {"clinical": [{"export_id": "b" * 32, "record_id": "9" * 32}]}
CLINICAL_WITHDRAWALS = {"clinical_withdrawals": [{"export_id": "8" * 32}]}


@pytest.mark.parametrize("name", ["export.batch", "export.receipt"])
def test_clinical_fields_need_v3_and_v2_is_the_contract_it_was(name: str) -> None:
    body = _batch_body if name == "export.batch" else _receipt_body
    accepted = [{"export_id": "b" * 32, "status": "accepted"}]
    applied = [{"export_id": "8" * 32, "status": "applied"}]
    clinical = (
        {**CLINICAL, **CLINICAL_WITHDRAWALS}
        if name == "export.batch"
        else {"clinical": accepted, "clinical_withdrawals": applied}
    )
    assert schemas.SCHEMAS[name] == 3 and 2 in schemas.SUPERSEDED[name]
    images = schemas.make_message(
        name, trust="RTK", producer="exporter@box1", body=body(), version=2
    )
    schemas.validate(images)  # images alone: v2
    assert images["version"] == 2
    with_clinical = schemas.make_message(
        name, trust="RTK", producer="exporter@box1", body=body(**clinical)
    )
    assert with_clinical["version"] == 3
    schemas.validate(with_clinical)
    schemas.validate({**with_clinical, "version": 3, "body": body()})  # v3 without them too
    for field, value in clinical.items():  # v2 refuses what v3 added
        old = {**with_clinical, "version": 2, "body": body(**{field: value})}
        with pytest.raises(SchemaError, match=f"{name} v2"):
            schemas.validate(old)
    with pytest.raises(SchemaError, match="no schema for version 4"):
        schemas.make_message(name, trust="RTK", producer="exporter@box1", body=body(), version=4)
