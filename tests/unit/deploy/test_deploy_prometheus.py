"""deploy/prometheus and deploy/grafana: rules compile, alert tests pass, names are real.

Every ``smartbox_*`` name used by alert rules, their tests, the dashboard and the operations
doc must be one that smartbox/metrics.py actually exposes (parsed with ``ast``, so this does
not import the package). promtool is required in CI (CI=true); locally it skips without it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.util import missing

ROOT = Path(__file__).resolve().parents[3]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "smartbox.json"
OPERATIONS = ROOT / "docs" / "operations.md"
METRICS_PY = ROOT / "smartbox" / "metrics.py"
CI = os.environ.get("CI", "").lower() == "true"

NAME_RE = re.compile(r"(?<![A-Za-z0-9_:])smartbox_[a-z0-9_]+")
RECORD_RE = re.compile(r"(?<![A-Za-z0-9_:])smartbox:[a-z0-9_:]+")


def exposed_names(kind: str, name: str) -> set[str]:
    """Series names prometheus_client exposes for one metric (client 0.20+ rules)."""
    if kind == "Counter":
        base = name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if kind == "Histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "Summary":
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "Info":
        return {f"{name}_info"}
    return {name}  # Gauge, Enum


def declared_metrics(source: str) -> dict[str, str]:
    """metric name -> constructor kind, for every Counter/Gauge/... call in a module."""
    kinds = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if kind in kinds and node.args and isinstance(node.args[0], ast.Constant):
            found[str(node.args[0].value)] = str(kind)
    return found


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    names: set[str] = set()
    for name, kind in declared_metrics(METRICS_PY.read_text()).items():
        names |= exposed_names(kind, name)
    assert names, "no metrics found in smartbox/metrics.py"
    return names


def test_exposed_names_follow_prometheus_client() -> None:
    assert exposed_names("Counter", "x_total") == {"x_total", "x_created"}
    assert exposed_names("Counter", "x") == {"x_total", "x_created"}
    assert "x_bucket" in exposed_names("Histogram", "x") and "x" not in exposed_names(
        "Histogram", "x"
    )
    assert exposed_names("Info", "x") == {"x_info"}
    src = 'A = Counter("a_total", "h", ["t"])\nB = prometheus_client.Histogram("b", "h")\n'
    assert declared_metrics(src) == {"a_total": "Counter", "b": "Histogram"}


def _files_using_metrics() -> list[Path]:
    files = [PROM / "alerts.yml", PROM / "alerts_test.yml", PROM / "prometheus.yml", DASHBOARD]
    return files + ([OPERATIONS] if OPERATIONS.exists() else [])


@pytest.mark.parametrize("path", _files_using_metrics(), ids=lambda p: p.name)
def test_every_metric_name_exists(path: Path, exposed: set[str]) -> None:
    used = set(NAME_RE.findall(path.read_text()))
    unknown = sorted(used - exposed)
    assert not unknown, f"{path.name} uses names smartbox/metrics.py does not expose: {unknown}"


def test_dashboard_recording_rules_are_defined() -> None:
    records = set(re.findall(r"^\s*- record: (\S+)", (PROM / "alerts.yml").read_text(), re.M))
    used = set(RECORD_RE.findall(DASHBOARD.read_text()))
    assert used <= records, sorted(used - records)


def _alerts() -> list[tuple[str, str]]:
    """(alert name, runbook anchor) for every alerting rule."""
    text = (PROM / "alerts.yml").read_text()
    blocks = re.split(r"^\s*- alert: ", text, flags=re.M)[1:]
    out = []
    for block in blocks:
        name = block.split()[0]
        m = re.search(r'runbook: "docs/operations\.md#([a-z0-9-]+)"', block)
        assert m, f"{name} has no runbook annotation"
        assert re.search(r"severity: (critical|warning|info)\b", block), f"{name}: severity"
        out.append((name, m.group(1)))
    return out


def test_the_cohort_and_clinical_processes_have_alerts() -> None:
    names = {name for name, _ in _alerts()}
    assert {
        "SmartboxCohortDown",
        "SmartboxRetrieveFailuresRising",
        "SmartboxRetrieveStudiesFailed",
        "SmartboxCohortStalled",
        "SmartboxRetrieveRateLimited",
        "SmartboxClinicalStageDown",
        "SmartboxClinicalHeldBackRatioHigh",
        "SmartboxClinicalRecordsRejected",
    } <= names
    text = (PROM / "alerts.yml").read_text()
    # the clinical queue's consumer and dead letters are watched like the others
    assert "exporter|clinical|national" in text and 'queue=~"smartbox\\\\..+\\\\.dlq"' in text
    tests = (PROM / "alerts_test.yml").read_text()
    assert "queue: smartbox.clinical.dlq" in tests and "queue: smartbox.clinical}" in tests


def test_every_alert_has_a_unit_test() -> None:
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "alerts_test.yml").read_text()))
    missing = sorted({name for name, _ in _alerts()} - tested)
    assert not missing, f"alerts without a promtool test: {missing}"


def _anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_every_runbook_anchor_exists() -> None:
    if not OPERATIONS.exists():
        pytest.fail("docs/operations.md is missing")
    headings = {
        _anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", OPERATIONS.read_text(), re.M)
    }
    missing = sorted({anchor for _, anchor in _alerts()} - headings)
    assert not missing, f"runbook anchors with no heading in docs/operations.md: {missing}"


# --- promtool --------------------------------------------------------------------------------


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if CI:
            pytest.fail("CI=true and promtool is not installed (apt-get install prometheus)")
        missing("promtool not installed (Debian: apt-get install prometheus)")
    return path


def _run(*args: str, cwd: Path = PROM) -> None:
    # a guard against a hung promtool, not a time limit: `promtool test rules` evaluates every
    # rule once a minute over each group's horizon (up to 62 h), CPU-bound in one thread, and
    # took 126 s on a slow 2-core VM
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_check_rules() -> None:
    _run(_promtool(), "check", "rules", "alerts.yml")


def test_promtool_test_rules() -> None:
    _run(_promtool(), "test", "rules", "alerts_test.yml")


def test_promtool_check_config() -> None:
    _run(_promtool(), "check", "config", "prometheus.yml")


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every dashboard expression is valid PromQL (checked as recording rules by promtool)."""
    promtool = _promtool()
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(exprs):
        expr = expr.replace("$__rate_interval", "5m").replace("$trust", ".*")
        lines += [f"      - record: dashboard:q{i}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "dashboard_rules.yml").write_text("\n".join(lines) + "\n")
    _run(promtool, "check", "rules", "dashboard_rules.yml", cwd=tmp_path)
