"""Crash safety: SIGKILL the anonymiser mid-study; after a restart every instance is in staging
exactly once, and the rest of the pipeline delivers exactly that many."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from helpers.pipeline import Pipeline
from helpers.util import wait_for

from smartbox.synthetic import make_ct_study

N = 120


def staged_dicom(p: Pipeline, code: str) -> list[str]:
    return [k for k in p.objects("staging", f"{code}/") if k.endswith(".dcm")]


def test_sigkill_anonymiser_mid_study(pipeline: Pipeline, tmp_path: Path) -> None:
    p = pipeline
    p.add_trust("RTK", quiet_seconds=1)
    p.start("receiver-RTK", "receive", "--trust", "RTK")
    p.start("exporter", "export")
    p.start("ingest", "ingest", "--archive-bucket", p.buckets["archive"])
    study = make_ct_study(7, series=2, per_series=N // 2, rows=512, columns=512)
    files = study.write(tmp_path / "send")
    result = p.storescu("RTK", files)
    assert result.returncode == 0, result.stderr
    wait_for(
        lambda: p.metric("receiver-RTK", "smartbox_studies_arrived_total", trust="RTK") == 1,
        60,
        "study.arrived",
    )

    p.start("anonymiser", "anonymise", "--prefetch", "1")
    wait_for(lambda: len(staged_dicom(p, "RTK")) >= N // 4, 120, "a quarter staged", 0.01)
    p.kill("anonymiser", signal.SIGKILL)
    at_kill = len(staged_dicom(p, "RTK"))
    assert 0 < at_kill < N, f"kill landed outside the study ({at_kill} of {N} staged)"
    time.sleep(1.0)
    assert p.objects("staging", "_export/studies/") == [], "nothing staged before the kill"

    p.start("anonymiser", "anonymise")
    wait_for(lambda: p.objects("staging", "_export/studies/RTK/"), 120, "study.staged")
    keys = staged_dicom(p, "RTK")
    assert len(keys) == N and len(set(keys)) == N
    manifests = [k for k in p.objects("staging", "RTK/") if "/manifest-" in k]
    assert len(manifests) == 1
    manifest = json.loads(p.read("staging", manifests[0]))
    assert sorted(i["key"] for i in manifest["instances"]) == sorted(keys)
    pending = p.objects("staging", "_export/studies/RTK/")
    assert len(pending) == 1

    export = p.run_cli("export", "--now")
    assert export.returncode == 0, export.stderr
    wait_for(
        lambda: p.metric("ingest", "smartbox_instances_ingested_total", trust="RTK") == N,
        120,
        "ingest",
    )
    assert len([k for k in p.objects("archive", "RTK/") if k.endswith(".dcm")]) == N
    assert p.queue_messages("anonymiser", dlq=True) == []
