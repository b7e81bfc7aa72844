"""Clinical intake on real services (RabbitMQ, SeaweedFS, dcmtk), every stage its own process.

Two patients' CT studies go through the real receiver and anonymiser; a clinical file for
them (and a third patient) with valid and invalid rows goes through ``smartbox clinical
submit`` and ``smartbox clinical stage``; one ``export --now`` carries both to the national
side. The valid records are staged and exported under the same pseudonym and the same date
shift as the patient's images (the national archive links them by pseudonym), the invalid
rows are reported with their reasons, and no planted identifier is in any staged or exported
clinical object, any process's log, or any message published on the bus."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import pika
import pydicom
import pytest
from helpers.clinical import NHS_A, NHS_B, NHS_BAD, NHS_C, identified, planted, write_csv
from helpers.pipeline import Pipeline, running
from helpers.util import wait_for

from consumers.clinical.national import patient_links
from smartbox import layout
from smartbox.rabbit import RabbitBus
from smartbox.s3 import S3Store
from smartbox.settings import S3Settings
from smartbox.synthetic import make_ct_study
from smartbox.topology import Topology

pytestmark = pytest.mark.integration
LOCAL = "LOC-IMG-4471"  # a patient whose images carry only a local ID


@pytest.fixture
def pipeline(
    tmp_path: Path, rabbitmq_url: str, namespace: str, s3_server, dcmtk
) -> Iterator[Pipeline]:
    yield from running(tmp_path, rabbitmq_url, namespace, s3_server)


class Tap:
    """A queue bound to every routing key of the namespace's exchanges: every message any
    process publishes (events and dead letters), kept for the scan."""

    def __init__(self, url: str, ns: str) -> None:
        self.url, self.name = url, f"{ns}.test-tap"
        RabbitBus(url, Topology(ns)).declare()
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        ch.queue_declare(self.name, durable=True)
        for exchange in (Topology(ns).exchange, Topology(ns).dlx):
            ch.queue_bind(self.name, exchange, routing_key="#")
        conn.close()

    def drain(self) -> list[bytes]:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        ch = conn.channel()
        out = []
        while True:
            method, _props, body = ch.basic_get(self.name, auto_ack=True)
            if method is None:
                break
            out.append(body)
        conn.close()
        return out

    def delete(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        conn.channel().queue_delete(self.name)
        conn.close()


@pytest.fixture
def tap(pipeline: Pipeline) -> Iterator[Tap]:
    """The tap queue is not in the namespace's topology: deleted here, pass or fail."""
    t = Tap(pipeline.amqp_url, pipeline.namespace)
    try:
        yield t
    finally:
        t.delete()


def _status(p: Pipeline) -> dict:
    out = p.run_cli("status", "--trust", "RCL", "--json")
    assert out.returncode in (0, 1), out.stdout + out.stderr  # 1: a broker hiccup only
    [trust] = json.loads(out.stdout)["trusts"]
    clinical: dict = trust["clinical"]
    return clinical


def _reconciled(p: Pipeline) -> tuple[int, list[str]]:
    out = p.run_cli("reconcile", "--trust", "RCL")
    lines = [ln for ln in out.stdout.splitlines() if "clinical" in ln]
    return out.returncode, lines


def _day(value: str) -> date:
    return datetime.strptime(value, "%Y%m%d").date()


def test_clinical_records_exported_linked_to_the_images_and_no_identifier_leaks(
    pipeline: Pipeline, tap: Tap, tmp_path: Path
) -> None:
    p = pipeline
    p.add_trust("RCL")
    p.start_all()
    p.start("clinical", "clinical", "stage")

    # images of two patients: one by NHS number, one by a local ID only
    studies = {
        NHS_A: make_ct_study(31, series=1, per_series=2, nhs_number=NHS_A),
        LOCAL: make_ct_study(32, series=1, per_series=2, nhs_number=LOCAL),
    }
    for n, study in enumerate(studies.values()):
        result = p.storescu("RCL", study.write(tmp_path / "send" / str(n)))
        assert result.returncode == 0, result.stderr

    rows = [
        identified(NHS_A, swab_2_date="2020-04-09", swab_2_result="negative"),  # row 2
        identified(NHS_BAD),  # row 3: check digit
        identified(NHS_B, swab_1_date="2021-02-30"),  # row 4: impossible date
        identified(NHS_C, swab_1_result="inconclusive-ish"),  # row 5: unknown result
        identified(NHS_C, swab_1_date=None, swab_1_result=None),  # row 6: no swab
        identified(  # row 7: valid, the patient known by a local ID only
            NHS_B,
            nhs_number=None,
            local_patient_id=LOCAL,
            date_of_birth=None,
            age="61",
            swab_1_date="2020-05-10",
            admission_date="2020-05-09",
            discharge_date="2020-05-25",
        ),
        identified(NHS_C, discharge_date="2020-03-01"),  # row 8: discharged before admission
        identified(NHS_C),  # row 9: valid, a patient without images
    ]
    path = write_csv(tmp_path / "clinical.csv", rows)
    sub = p.run_cli("clinical", "submit", "--trust", "RCL", str(path))
    assert sub.returncode == 3, sub.stdout + sub.stderr
    lines = sub.stdout.splitlines()
    for row, field, reason in [
        (3, "nhs_number", "nhs_number_checksum"),
        (4, "swab_1_date", "date_invalid"),
        (5, "swab_1_result", "value_unknown"),
        (6, "swab_1_date", "required"),
        (8, "discharge_date", "date_order"),
    ]:
        assert f"{path}: row {row}: field {field}: {reason}" in lines, sub.stdout
    assert lines[-1].endswith(
        "8 rows: 3 accepted, 5 held back (date_invalid 1, date_order 1, "
        "nhs_number_checksum 1, required 1, value_unknown 1)"
    ), lines[-1]

    def clinical_staged() -> list[str]:
        return [
            k for k in p.objects("staging", "RCL/_clinical/") if layout.is_clinical_record_key(k)
        ]

    wait_for(lambda: len(clinical_staged()) == 3, 60, "3 clinical records staged")
    # the same file again: nothing new downstream
    again = p.run_cli("clinical", "submit", "--trust", "RCL", str(path))
    assert again.returncode == 3
    wait_for(
        lambda: p.metric("clinical", "smartbox_clinical_records_duplicate_total", trust="RCL") == 3,
        60,
        "the resubmission seen as duplicates",
    )
    assert len(clinical_staged()) == 3
    assert p.metric("clinical", "smartbox_clinical_records_accepted_total", trust="RCL") == 3
    for reason in (
        "nhs_number_checksum",
        "date_invalid",
        "value_unknown",
        "required",
        "date_order",
    ):
        assert (
            p.metric(
                "clinical", "smartbox_clinical_records_held_back_total", trust="RCL", reason=reason
            )
            == 1
        ), reason

    def images_recorded() -> int:
        total = 0
        for key in p.objects("staging", "_export/studies/RCL/"):
            record = json.loads(p.read("staging", key))
            total += record["instances"] if record["state"] == "pending" else 0
        return total

    wait_for(lambda: images_recorded() == 4, 120, "both studies staged and recorded")

    # smartbox status and reconcile count them from staging: one submission (the same file
    # twice is one: 8 rows, 3 accepted, 5 held back by reason), 3 versions staged, all pending
    status = _status(p)
    assert {k: status[k] for k in ("submissions", "rows", "accepted", "held_back")} == {
        "submissions": 1,
        "rows": 8,
        "accepted": 3,
        "held_back": 5,
    }
    assert status["held_back_reasons"] == {
        "date_invalid": 1,
        "date_order": 1,
        "nhs_number_checksum": 1,
        "required": 1,
        "value_unknown": 1,
    }
    assert (status["staged"], status["pending"], status["exported"]) == (3, 3, 0)
    text = p.run_cli("status", "--trust", "RCL").stdout
    assert "RCL: clinical rows held back: date_invalid 1, date_order 1," in text, text
    code, lines = _reconciled(p)
    assert code == 0 and lines == [
        "RCL: clinical records: 3 staged = 0 exported + 3 pending + 0 withdrawn before export; "
        "0 acknowledged, 0 in flight, 0 failed, 0 past 48 h; rows 3 accepted, 5 held back "
        "at submission"
    ], lines
    # a record the exporter would never send (its queue marker lost) is a visible discrepancy
    [marker] = p.objects("staging", "_export/clinical-queue/RCL/")[:1]
    store = S3Store(S3Settings(p.s3.endpoint, p.s3.access_key, p.s3.secret_key))
    store.delete(p.buckets["staging"], marker)
    code, lines = _reconciled(p)
    assert code == 5 and lines[1] == (
        "DISCREPANCY RCL: clinical: 1 record(s) waiting with no queue marker: the exporter "
        "will not send them"
    ), lines
    store.put_bytes(p.buckets["staging"], marker, b"")

    export = p.run_cli("export", "--now")
    assert export.returncode == 0, export.stdout + export.stderr
    wait_for(
        lambda: (
            p.metric("exporter", "smartbox_clinical_records_acknowledged_total", trust="RCL") == 3
        ),
        120,
        "clinical records acknowledged nationally",
    )

    status = _status(p)
    assert (status["staged"], status["exported"], status["acknowledged"]) == (3, 3, 3)
    assert (status["pending"], status["in_flight"]) == (0, 0)
    code, lines = _reconciled(p)
    assert code == 0 and lines[0].startswith(
        "RCL: clinical records: 3 staged = 3 exported + 0 pending + 0 withdrawn before export; "
        "3 acknowledged, 0 in flight"
    ), lines
    today = date.today().isoformat()
    html = tmp_path / "report.html"
    out = p.run_cli(
        "report", "--trust", "RCL", "--from", today, "--to", today, "--timezone", "UTC",
        "--out", str(html),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    page = html.read_text()
    for label, n in (("Rows accepted", 3), ("Records staged", 3), ("Records acknowledged", 3)):
        assert f'<tr><td>{label}</td><td class="n">{n}</td></tr>' in page, label

    # the export pass carried the images and the clinical records in signed batches: the
    # records in the trust's first one, beside images (version 2 only where they are)
    manifests = [
        json.loads(p.read("national", k))
        for k in p.objects("national", "_batches/RCL/")
        if k.endswith(".json")
    ]
    assert sum(len(m["studies"]) for m in manifests) == 2
    [with_clinical] = [m for m in manifests if "clinical" in m]
    assert with_clinical["version"] == 2 and len(with_clinical["clinical"]) == 3
    assert with_clinical["studies"], "the clinical records travel with images"
    assert {m["version"] for m in manifests if "clinical" not in m} <= {1}

    # the national side links each patient's records to their images by pseudonym
    archive = S3Store(S3Settings(p.s3.endpoint, p.s3.access_key, p.s3.secret_key))
    images = {}
    for key in p.objects("archive"):
        if key.endswith(".dcm"):
            ds = pydicom.dcmread(io.BytesIO(p.read("archive", key)))
            images[str(ds.PatientID)] = (str(ds.StudyInstanceUID), _day(ds.StudyDate))
    assert len(images) == 2
    originals = {who: _day(s.datasets[0].StudyDate) for who, s in studies.items()}
    swabs = {NHS_A: date(2020, 4, 2), LOCAL: date(2020, 5, 10)}
    for pid, (uid, staged_day) in images.items():
        links = patient_links(archive, p.buckets["archive"], pid)
        assert links["studies"] == [uid]
        [record] = links["clinical"].values()  # the image's pseudonym is the record's
        assert record["patient"] == pid
        who = NHS_A if record["age"] == 70 else LOCAL  # row 2 (born 1950) or row 7 (61)
        # the same shift: the interval from scan to swab is the original one
        swab = date.fromisoformat(record["swabs"][0]["date"])
        assert swab - staged_day == swabs[who] - originals[who]
        assert swab != swabs[who]  # and the dates were shifted
    assert {
        r["age"]
        for pid in images
        for r in patient_links(archive, p.buckets["archive"], pid)["clinical"].values()
    } == {70, 61}

    # no planted identifier anywhere: staged and exported clinical objects, logs, messages
    values = [v for row in rows for v in planted(row)] + [LOCAL]
    blobs = [p.read("staging", k) for k in p.objects("staging", "RCL/_clinical/")]
    blobs += [
        p.read("national", k)
        for k in p.objects("national")
        if "/_clinical/" in k or k.startswith("_batches/")
    ]
    blobs += [
        p.read("archive", k)
        for k in p.objects("archive")
        if "_clinical" in k or k.startswith("_ingest/patients/")
    ]
    blobs += [p.read("staging", k) for k in p.objects("staging", "_export/clinical")]
    messages = tap.drain()
    assert any(b'"clinical.arrived"' in m for m in messages)
    assert any(b'"clinical.submitted"' in m for m in messages)
    everything = b"\n".join(blobs + messages)
    clis = (sub, again, export, out)
    logs = p.logs() + "".join(c.stdout + c.stderr for c in clis)
    for value in values:
        assert value.encode() not in everything, "a planted identifier left the submit command"
        assert value not in logs, "a planted identifier reached a log or the report"

    # a withdrawal (national data opt-out) takes the patient's clinical records out nationally
    # too, with the images, in the next batch
    [pid_a] = [
        pid
        for pid in images
        if [
            r["age"] for r in patient_links(archive, p.buckets["archive"], pid)["clinical"].values()
        ]
        == [70]
    ]
    out = p.run_cli("withdraw", "--trust", "RCL", "--nhs-number", NHS_A)
    assert out.returncode == 0, out.stdout + out.stderr
    export = p.run_cli("export", "--now")
    assert export.returncode == 0, export.stdout + export.stderr
    wait_for(
        lambda: (
            {
                k: v
                for k, v in patient_links(archive, p.buckets["archive"], pid_a).items()
                if k in ("studies", "clinical")
            }
            == {"studies": [], "clinical": {}}
        ),
        120,
        "the withdrawn patient's study and clinical record deleted nationally",
    )
    wait_for(
        lambda: not p.objects("staging", "_export/clinical-withdrawals/"),
        60,
        "the clinical withdrawal acknowledged",
    )
    others = [pid for pid in images if pid != pid_a]
    assert patient_links(archive, p.buckets["archive"], others[0])["clinical"]  # untouched
