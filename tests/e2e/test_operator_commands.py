"""``smartbox status`` against a running pipeline: real processes, RabbitMQ, S3 and dcmtk."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.pipeline import Pipeline
from helpers.util import wait_for

from smartbox.synthetic import make_ct_study


def status(p: Pipeline, *args: str) -> dict:
    out = p.run_cli("status", "--json", *args, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def by_trust(doc: dict) -> dict[str, dict]:
    return {t["trust"]: t for t in doc["trusts"]}


def test_status_follows_a_study_through_the_running_pipeline(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    p = pipeline
    p.add_trust("RTK")
    p.add_trust("RGT")  # configured, silent: zeros and "never"
    p.start_all()
    p.start("clinical", "clinical", "stage")  # every work queue has its stage

    before = status(p)
    assert by_trust(before)["RGT"]["last_seen"] is None
    assert by_trust(before)["RTK"]["received_studies"] == 0
    queues = {q["role"]: q for q in before["queues"]}
    assert set(queues) == {
        "anonymiser",
        "exporter",
        "national.ingest",
        "export.receipts",
        "clinical",
    }
    assert all(q["consumers"] == 1 for q in queues.values()), queues  # each stage consumes
    assert all(q["dlq_messages"] == 0 for q in queues.values())

    files = make_ct_study(700, series=2, per_series=3).write(tmp_path / "send")
    assert p.storescu("RTK", files).returncode == 0

    def staged() -> dict | None:
        t = by_trust(status(p))["RTK"]
        return t if t["staged_studies"] == 1 and t["pending_export"] == 1 else None

    t = wait_for(staged, 120, "RTK staged, waiting for export")
    assert (t["received_studies"], t["received_instances"]) == (1, 6)
    assert (t["staged_instances"], t["held_back_instances"], t["in_deid"]) == (6, 0, 0)
    assert (t["exported_studies"], t["acknowledged_studies"]) == (0, 0)
    assert t["last_seen"] and t["last_seen"].endswith("Z")

    assert p.run_cli("export", "--now").returncode == 0

    def acked() -> dict | None:
        t = by_trust(status(p))["RTK"]
        return t if t["acknowledged_studies"] == 1 else None

    t = wait_for(acked, 120, "RTK acknowledged nationally")
    assert (t["exported_studies"], t["pending_export"], t["in_flight"]) == (1, 0, 0)
    assert t["failed_studies"] == 0
    silent = by_trust(status(p))["RGT"]
    assert (silent["received_studies"], silent["staged_studies"], silent["last_seen"]) == (
        0,
        0,
        None,
    )

    text = p.run_cli("status", "--trust", "RTK")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    header = next(line for line in lines if line.startswith("TRUST"))
    row = next(line for line in lines if line.startswith("RTK "))
    assert header.split()[:4] == ["TRUST", "RECEIVED", "IN-DEID", "STAGED"]
    assert row.split()[1:4] == ["1/6", "0", "1/6"]
    assert any(line.startswith(f"{p.namespace}.anonymiser ") for line in lines)
    # counts only: nothing that names a study
    assert "2.25." not in text.stdout + json.dumps(status(p))


def test_status_operator_mistakes_are_one_line(pipeline: Pipeline) -> None:
    p = pipeline
    p.add_trust("RTK")
    for args, needle in (
        (("--trust", "NOPE"), "--trust NOPE"),
        (("--trust", "bad code"), "--trust 'bad code'"),
        (("--days", "0"), "--days 0"),
    ):
        out = p.run_cli("status", *args)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert len(lines) == 1 and needle in lines[0], out.stderr
    # no broker: the trusts' numbers still come, the queues say why not, exit 1
    p.extra_env["SMARTBOX_AMQP_URL"] = "amqp://guest:guest@127.0.0.1:1/%2F"
    out = p.run_cli("status")
    assert out.returncode == 1 and "RTK" in out.stdout and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("smartbox: unavailable: RabbitMQ")


def hop_lines(stdout: str, code: str) -> dict[str, float]:
    """``CODE  hop  1.23 s  note`` lines of ``smartbox probe``: hop -> seconds."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == code and parts[3] == "s":
            out[parts[1]] = float(parts[2])
    return out


def test_probe_follows_a_synthetic_study_to_the_canary_never_to_the_national_bucket(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    p = pipeline
    canary = f"canary-{p.namespace}"
    p.extra_env["SMARTBOX_EXPORT_CANARY_BUCKET"] = canary
    p.add_trust("RTK", quiet_seconds=1.0)
    p.start_all()

    out = p.run_cli("probe", "--trust", "RTK", "--export", "--timeout", "120")
    assert out.returncode == 0, out.stdout + out.stderr
    hops = hop_lines(out.stdout, "RTK")
    assert list(hops) == ["store", "staged", "recorded", "exported", "acknowledged"]
    assert all(s >= 0 for s in hops.values())
    assert "probe passed every hop" in out.stdout

    # the probe study is in the canary bucket, signed synthetic, and nowhere national
    client = p.s3.client()
    batches = [
        o.object_name
        for o in client.list_objects(canary, prefix="_batches/", recursive=True)
        if o.object_name.endswith(".json")
    ]
    assert len(batches) == 1
    signed = json.loads(client.get_object(canary, batches[0]).read())
    assert signed["synthetic"] is True and len(signed["studies"][0]["objects"]) == 2
    assert p.objects("national") == []
    assert [k for k in p.objects("archive") if not k.startswith("_ingest/")] == []
    assert p.metric("ingest", "smartbox_instances_ingested_total", trust="RTK") == 0

    # status counts it as a probe, not as the trust's traffic
    t = by_trust(status(p))["RTK"]
    assert (t["probe_studies"], t["received_studies"], t["staged_studies"]) == (1, 0, 0)
    assert t["last_seen"] is None and t["last_batch_any"]

    # a real study still goes national, without the probe
    files = make_ct_study(710, series=1, per_series=2).write(tmp_path / "send")
    assert p.storescu("RTK", files).returncode == 0
    wait_for(lambda: by_trust(status(p))["RTK"]["pending_export"] == 1, 120, "real one staged")
    export = p.run_cli("export", "--now")
    assert export.returncode == 0 and "exported 2 instances" in export.stdout, export.stdout
    national = [k for k in p.objects("national") if k.endswith(".dcm")]
    assert len(national) == 2
    probe_uid = signed["studies"][0]["study_uid"]
    assert not any(probe_uid in k for k in p.objects("national"))

    # without --export: three hops; a stage down is a failed hop, named, exit 1
    quick = p.run_cli("probe", "--trust", "RTK", "--timeout", "120")
    assert quick.returncode == 0, quick.stderr
    assert list(hop_lines(quick.stdout, "RTK")) == ["store", "staged", "recorded"]
    p.kill("anonymiser")
    failed = p.run_cli("probe", "--trust", "RTK", "--timeout", "6")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "smartbox: probe RTK: hop staged failed" in failed.stderr.splitlines()[-1]


def test_probe_on_a_schedule_serves_its_own_metrics(pipeline: Pipeline) -> None:
    p = pipeline
    p.add_trust("RTK", quiet_seconds=1.0)
    p.start_all()
    p.start("probe", "probe", "--trust", "RTK", "--every", "10s", "--timeout", "60")
    # the series exist at zero before the first probe has finished
    assert p.metric("probe", "smartbox_probe_failures_total", trust="RTK", hop="staged") == 0
    wait_for(
        lambda: p.metric("probe", "smartbox_probe_last_success_timestamp_seconds", trust="RTK"),
        90,
        "a passed probe",
    )
    for hop in ("store", "staged", "recorded"):
        assert p.metric("probe", "smartbox_probe_seconds", trust="RTK", hop=hop) > 0, hop
        assert p.metric("probe", "smartbox_probe_failures_total", trust="RTK", hop=hop) == 0
    # the receiver counts them as probe instances, not as the trust's (a silent trust stays so)
    received = p.metric("receiver-RTK", "smartbox_probe_instances_received_total", trust="RTK")
    assert received >= 2
    assert p.metric("receiver-RTK", "smartbox_instances_received_total", trust="RTK") == 0
    assert p.metric("anonymiser", "smartbox_instances_staged_total", trust="RTK") == 0


def test_probe_operator_mistakes_are_one_line(pipeline: Pipeline) -> None:
    p = pipeline
    p.add_trust("RTK")
    for args, needle in (
        (("--trust", "NOPE"), "NOPE"),
        (("--trust", "RTK", "--export"), "SMARTBOX_EXPORT_CANARY_BUCKET"),
        (("--trust", "RTK", "--every", "1s"), "--every"),
        (("--trust", "RTK", "--timeout", "0"), "--timeout"),
    ):
        out = p.run_cli("probe", *args)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert len(lines) == 1 and needle in lines[0], out.stderr
