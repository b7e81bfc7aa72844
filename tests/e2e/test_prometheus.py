"""A real Prometheus scrapes the running pipeline and loads our alert rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers.pipeline import Pipeline, free_port
from helpers.util import wait_for

from smartbox.synthetic import make_ct_study

ROOT = Path(__file__).resolve().parents[2]


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]["result"]


def test_prometheus_scrapes_per_trust_counts(pipeline: Pipeline, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        from conftest import missing

        missing("prometheus not installed (apt-get install prometheus)")
    p = pipeline
    p.add_trust("RTK")
    p.add_trust("RGT")
    p.start_all()
    targets = {name: proc.metrics_port for name, proc in p.procs.items()}
    (tmp_path / "alerts.yml").write_text((ROOT / "deploy/prometheus/alerts.yml").read_text())
    jobs = "\n".join(
        f"  - job_name: {name}\n    honor_labels: true\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{port}']"
        for name, port in targets.items()
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{tmp_path / 'alerts.yml'}']\nscrape_configs:\n{jobs}\n"
    )
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        sent = {}
        for n, code in enumerate(("RTK", "RGT")):
            files = make_ct_study(500 + n, series=1, per_series=2 + n).write(tmp_path / code)
            assert p.storescu(code, files).returncode == 0
            sent[code] = len(files)

        def received() -> dict[str, float]:
            try:
                rows = query(port, "sum by (trust) (smartbox_instances_staged_total)")
            except OSError:
                return {}
            got = {r["metric"]["trust"]: float(r["value"][1]) for r in rows}
            return got if got == {k: float(v) for k, v in sent.items()} else {}

        assert wait_for(received, 120, "Prometheus to see staged counts per trust")
        wait_for(
            lambda: (
                len(up := query(port, "up")) == len(targets)
                and all(r["value"][1] == "1" for r in up)
            ),
            60,
            "every process to be up",
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as r:
            groups = json.load(r)["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        assert len(rules) >= 20
        assert all(rule["health"] in ("ok", "unknown") for rule in rules), [
            (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] == "err"
        ]
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


pytestmark = pytest.mark.e2e
