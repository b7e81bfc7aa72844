"""Shared by the cohort retrieval tests against Orthanc (C-MOVE and C-GET): the pipeline
fixture's body, the trust file's ``[retrieve]`` table, and what the tests read back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from helpers.pipeline import Pipeline, running
from helpers.receiver_orthanc import orthanc_available
from helpers.util import missing


def orthanc_pipeline(
    tmp_path: Path, rabbitmq_url: str, namespace: str, s3_server: object
) -> Iterator[Pipeline]:
    """A pipeline whose processes are stopped afterwards; Orthanc must be installed."""
    if not orthanc_available():
        missing("Orthanc (Debian package orthanc) is not installed")
    yield from running(tmp_path, rabbitmq_url, namespace, s3_server)


def retrieve_table(
    code: str,
    archive_port: int,
    *,
    method: str = "C-MOVE",
    associations: int = 2,
    rate: float = 50,
    burst: int = 20,
    extra: str = "",
) -> str:
    """A ``[retrieve]`` table with one archive on loopback, its window always open and short
    retry backoffs (``extra``: more keys of the table itself)."""
    return f"""
[retrieve]
calling_ae = "SMARTBOX_QR"
retry_initial_seconds = 1
retry_max_seconds = 4
max_attempts = 20
{extra}
[[retrieve.archives]]
name = "pacs"
ae_title = "{code}_PACS"
host = "127.0.0.1"
port = {archive_port}
method = "{method}"
max_associations = {associations}
instances_per_second = {rate}
burst_instances = {burst}
queries_per_second = 50
window_start = "0 0 * * *"
window_hours = 24
timezone = "UTC"
network_timeout_seconds = 20
"""


def cohort_status(p: Pipeline, code: str, cohort_id: str) -> dict:
    out = p.run_cli("cohort", "status", "--trust", code, cohort_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def staged_studies(p: Pipeline, code: str) -> set[str]:
    """The study UIDs (pseudonymous) with a manifest in staging."""
    return {k.split("/")[1] for k in p.objects("staging", f"{code}/") if "/manifest-" in k}
