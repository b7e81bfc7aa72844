"""The headline test: two trusts, real dcmtk sender, real RabbitMQ and S3, separate processes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydicom
from helpers.malformed import malformed_study
from helpers.pipeline import Pipeline, json_lines
from helpers.util import wait_for

from smartbox.synthetic import make_ct_study


def pending_instances(p: Pipeline, code: str) -> int:
    total = 0
    for key in p.objects("staging", f"_export/studies/{code}/"):
        record = json.loads(p.read("staging", key))
        total += record["instances"] if record["state"] == "pending" else 0
    return total


def test_two_trusts_end_to_end(pipeline: Pipeline, tmp_path: Path) -> None:
    p = pipeline
    p.add_trust("RTK")
    p.add_trust("RGT")
    p.start_all()
    sent: dict[str, int] = {}
    planted: list[str] = []
    for n, code in enumerate(("RTK", "RGT")):
        study = make_ct_study(100 + n, series=3, per_series=4)
        files = study.write(tmp_path / "send" / code)
        result = p.storescu(code, files)
        assert result.returncode == 0, result.stderr
        sent[code] = len(files)
        planted += study.identifiers

    for code in sent:
        wait_for(lambda c=code: pending_instances(p, c) == sent[c], 120, f"{code} staged")

    export = p.run_cli("export", "--now")
    assert export.returncode == 0, export.stderr
    assert f"exported {sum(sent.values())} instances" in export.stdout

    for code in sent:
        wait_for(
            lambda c=code: (
                p.metric("ingest", "smartbox_instances_ingested_total", trust=c) == sent[c]
            ),
            120,
            f"{code} ingested",
        )

    # the national side: exactly the instances sent, each verified against its manifest
    # the exporter records the national side's receipts next to the exports they acknowledge
    receipt_keys = wait_for(
        lambda: (
            len(p.objects("staging", "_export/receipts/")) == 2
            and p.objects("staging", "_export/receipts/")
        ),
        60,
        "receipts",
    )
    receipts = [json.loads(p.read("staging", k)) for k in receipt_keys]
    assert sorted(r["trust"] for r in receipts) == ["RGT", "RTK"]
    for r in receipts:
        assert r["status"] == "accepted"
        assert {s["status"] for s in r["studies"]} == {"accepted"}
        assert r["instances_verified"] == sent[r["trust"]]
        assert r["checksum_failures"] == 0 and r["missing"] == 0
    for code in sent:
        assert p.metric("exporter", "smartbox_export_receipts_total", trust=code) == 1
    manifests = [k for k in p.objects("national", "_batches/") if k.endswith(".json")]
    assert len(manifests) == 2
    expected: dict[str, str] = {}
    study_manifests = []
    for key in manifests:
        for study in json.loads(p.read("national", key))["studies"]:
            study_manifests.append(study["manifest_key"])
            for obj in study["objects"]:
                expected[obj["key"]] = obj["sha256"]
    archived = [k for k in p.objects("archive") if k.endswith(".dcm")]
    assert sorted(archived) == sorted(expected)
    for code, count in sent.items():
        assert len([k for k in archived if k.startswith(f"{code}/")]) == count
    exported_bytes = []
    for key in archived:
        data = p.read("archive", key)
        assert hashlib.sha256(data).hexdigest() == expected[key]
        exported_bytes.append(data)
        ds = pydicom.dcmread(__import__("io").BytesIO(data))
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.StudyInstanceUID.startswith("2.25.")
    for key in manifests + study_manifests:
        exported_bytes.append(p.read("national", key))

    # no planted identifier anywhere in what left the box, nor in any log or message
    everything = b"".join(exported_bytes)
    logs = p.logs()
    for value in planted:
        assert value.encode() not in everything, "a planted identifier was exported"
        assert value not in logs, "a planted identifier reached a log"
        assert value not in json.dumps(receipts)

    # nor any secret
    from helpers.pipeline import KEY

    assert KEY not in logs and p.s3.secret_key not in logs

    # metrics count them per trust, at every stage
    for code, count in sent.items():
        assert (
            p.metric(f"receiver-{code}", "smartbox_instances_received_total", trust=code) == count
        )
        assert (
            p.metric(f"receiver-{code}", "smartbox_instances_published_total", trust=code) == count
        )
        assert p.metric("anonymiser", "smartbox_instances_staged_total", trust=code) == count
        assert p.metric("ingest", "smartbox_instances_ingested_total", trust=code) == count
    assert p.metric("receiver-RTK", "smartbox_instances_received_total", trust="RGT") == 0
    for role in ("anonymiser", "exporter", "national.ingest"):
        assert p.queue_messages(role, dlq=True) == []
    assert_one_correlation_id_per_study(p, export.stderr)


def assert_one_correlation_id_per_study(p: Pipeline, export_log: str) -> None:
    """Every process logs JSON lines; one study's correlation id, minted when the receiver
    announced it, is on its lines at the anonymiser, the exporter (recording, the export
    pass, the receipt) and the national ingest."""
    logs = {name: p.json_log(name) for name in p.procs}
    logs["export --now"] = json_lines(export_log)
    assert {r["process"] for r in logs["anonymiser"]} == {"anonymiser"}
    announced = [r for r in logs["receiver-RTK"] if "announced" in r["message"]]
    assert len(announced) == 1 and announced[0]["trust"] == "RTK"
    correlation = announced[0]["correlation_id"]
    assert correlation and announced[0]["message_id"]

    def said(name: str, words: str) -> list[dict]:
        return [
            r for r in logs[name] if r["correlation_id"] == correlation and words in r["message"]
        ]

    assert said("anonymiser", "staged") and said("exporter", "recorded: pending")
    assert said("export --now", "exported in batch") and said("ingest", "accepted")
    assert said("exporter", "acknowledged nationally")
    for name in ("anonymiser", "exporter", "ingest"):
        assert {r["trust"] for r in said(name, "")} == {"RTK"}
    # the other trust's study has its own
    other = [r for r in logs["receiver-RGT"] if "announced" in r["message"]]
    assert other[0]["correlation_id"] != correlation


def test_adding_a_trust_restarts_nothing_else(pipeline: Pipeline, tmp_path: Path) -> None:
    """A new trust is its file plus its receiver: the running consumers pick it up."""
    p = pipeline
    p.add_trust("RTK")
    p.start_all()
    before = {name: proc.popen.pid for name, proc in p.procs.items()}

    p.add_trust("RGT")
    p.start("receiver-RGT", "receive", "--trust", "RGT")
    study = make_ct_study(300, series=1, per_series=3)
    files = study.write(tmp_path / "send")
    result = p.storescu("RGT", files)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: pending_instances(p, "RGT") == 3, 120, "RGT staged")
    assert p.run_cli("export", "--now").returncode == 0
    wait_for(
        lambda: p.metric("ingest", "smartbox_instances_ingested_total", trust="RGT") == 3,
        120,
        "RGT ingested",
    )
    # the processes that were running before are the same processes, still running
    for name, pid in before.items():
        assert p.procs[name].popen.pid == pid and p.procs[name].popen.poll() is None, name
    # and the existing trust's receiver never saw the new trust's traffic
    assert p.metric("receiver-RTK", "smartbox_instances_received_total", trust="RGT") == 0
    assert p.metric("receiver-RTK", "smartbox_associations_total", trust="RTK") == 0


def test_malformed_identifiable_input_leaves_no_value_in_any_log(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """pydicom's validation warnings quote values: a name in a DA, an MRN in an IS, a name in
    a UI, over-long accession and NHS numbers. Sent over DICOM to the real receiver and
    de-identified by the real anonymiser process, none of them may reach a log line."""
    p = pipeline
    p.add_trust("RTK")
    p.start("receiver-RTK", "receive", "--trust", "RTK")
    p.start("anonymiser", "anonymise")
    study = malformed_study(400)
    files = study.write(tmp_path / "send")
    result = p.storescu("RTK", files)
    assert result.returncode == 0, result.stderr

    def manifests() -> list[dict]:
        keys = [k for k in p.objects("staging", "RTK/") if "/manifest-" in k]
        return [json.loads(p.read("staging", k)) for k in keys]

    done = wait_for(
        lambda: [m for m in manifests() if len(m["instances"]) + len(m["held_back"]) == 5],
        120,
        "the malformed study staged or held back",
    )
    assert len(done) == 1
    families = {h["reason"].split(":", 1)[0] for h in done[0]["held_back"]}

    def counted() -> float:
        staged = p.metric("anonymiser", "smartbox_instances_staged_total", trust="RTK")
        return staged + sum(
            p.metric("anonymiser", "smartbox_instances_held_back_total", trust="RTK", reason=r)
            for r in families
        )

    # the counters move once the manifest is written and study.staged confirmed, a moment
    # after the manifest can be read: wait for them, then they must say exactly 5
    wait_for(lambda: counted() >= 5, 30, "the anonymiser's counters")
    assert counted() == 5
    logs = p.logs()
    assert "anonymiser" in logs and "staged" in logs  # the logs are there, and say things
    for value in study.identifiers:
        assert value not in logs, "a planted identifier reached a log"
    for entry in done[0]["instances"]:
        data = p.read("staging", entry["key"])
        for value in study.identifiers:
            assert value.encode() not in data, "a planted identifier was staged"
    assert p.queue_messages("anonymiser", dlq=True) == []
