"""A real Prometheus for tests (Debian's ``prometheus``): own port, data directory and config.

The scrape configuration is ``deploy/prometheus/prometheus.yml`` itself, its jobs (names,
metrics paths, honor_labels) kept and only their targets replaced by the test's processes, so
what the alerts and dashboards select (``job="smartbox-receiver"``, ``rabbitmq-per-object``)
is what production scrapes.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .pipeline import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "prometheus"
#: a scrape target: "host:port" and its target labels
Target = tuple[str, dict[str, str]]


def prometheus_binary() -> str:
    """The ``prometheus`` server binary; skipped locally, failed in CI, when it is missing."""
    path = shutil.which("prometheus")
    if path is None:
        from conftest import missing

        missing("prometheus not installed (apt-get install prometheus)")
    return str(path)


def deploy_config(targets: Mapping[str, list[Target]], rule_files: list[Path]) -> dict[str, Any]:
    """``deploy/prometheus/prometheus.yml`` scraping ``targets`` (job name -> targets) every
    second. Every job of the file must be given targets, or named with an empty list to drop
    it (a job this test cannot run, such as MinIO's)."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(targets), f"deploy jobs {sorted(jobs)} vs targets {sorted(targets)}"
    scrape = []
    for name, job in jobs.items():
        if not targets[name]:
            continue
        kept = {
            k: v for k, v in job.items() if not k.endswith("_configs") and k != "scrape_interval"
        }
        kept["static_configs"] = [
            {"targets": [address], "labels": labels} for address, labels in targets[name]
        ]
        scrape.append(kept)
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": scrape,
    }


@dataclass
class Prometheus:
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, config: dict[str, Any], timeout: float = 60) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        log = self.directory / "prometheus.log"
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={path}",
                    f"--storage.tsdb.path={self.directory / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"prometheus not ready within {timeout:.0f}s")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def api(self, path: str, **params: str) -> Any:
        """``data`` of an HTTP API answer; AssertionError with Prometheus's error otherwise."""
        url = self.url(f"/api/v1/{path}") + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                answer = json.load(r)
        except urllib.error.HTTPError as exc:
            answer = json.load(exc)
        assert answer["status"] == "success", (params, answer.get("error"))
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the result as a list of series (a scalar becomes one series)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(series["value"][1]) for series in result]


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a number (NaN, a 0/0 ratio, is not evidence)."""
    return any(math.isfinite(v) for v in values(result))
