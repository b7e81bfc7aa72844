"""deploy/compose and deploy/systemd: consistent ports, paths and hardening.

Docker is not available to the tests, so the compose file is parsed, not run (and only when
PyYAML is installed). Unit files are checked as text and, where systemd-analyze exists, by
``systemd-analyze verify`` with the ExecStart binary swapped for /bin/true.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "deploy" / "compose"
SYSTEMD = ROOT / "deploy" / "systemd"
PROM_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
SUBCOMMANDS = {"receive", "anonymise", "export", "ingest"}


def _yaml():  # type: ignore[no-untyped-def]
    return pytest.importorskip("yaml", reason="PyYAML is not installed in the venv: not parsed")


def test_compose_services_and_mounts() -> None:
    yaml = _yaml()
    doc = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"rabbitmq", "minio", "minio-init", "prometheus", "grafana"} <= set(services)
    smartbox = {n: s for n, s in services.items() if s.get("image") == "smartbox:dev"}
    assert {s["command"][0] for s in smartbox.values()} == SUBCOMMANDS
    assert {s["command"][2] for s in smartbox.values() if s["command"][0] == "receive"} == {
        "RTK",
        "RGT",
    }
    for name, svc in smartbox.items():
        assert svc["build"]["dockerfile"] == "deploy/compose/Dockerfile", name
        assert (COMPOSE / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    for svc in services.values():  # every bind-mounted file exists
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (COMPOSE / src).exists(), src
    for trust in ("RTK", "RGT"):
        assert (COMPOSE / "trusts" / f"{trust}.toml").is_file()
    assert (COMPOSE / doc["secrets"]["smartbox-env"]["file"]).is_file()


def test_prometheus_targets_match_compose_ports() -> None:
    yaml = _yaml()
    services = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["services"]
    prom = yaml.safe_load(PROM_CONFIG.read_text())
    targets = {
        t
        for job in prom["scrape_configs"]
        if job["job_name"].startswith("smartbox-")
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    expected = {
        f"{name}:{svc['environment']['SMARTBOX_METRICS_PORT']}"
        for name, svc in services.items()
        if svc.get("image") == "smartbox:dev"
    }
    assert targets == expected


def test_dockerfile() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install /src" in text and "USER smartbox" in text
    assert '["smartbox"]' in text


def _unit(path: Path) -> dict[str, list[str]]:
    """key -> values (systemd allows repeated keys); section names are not needed here."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


UNITS = {
    "smartbox-receiver@.service": "receive --trust %i",
    "smartbox-anonymiser.service": "anonymise",
    "smartbox-exporter.service": "export",
    "smartbox-ingest.service": "ingest",
}


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_hardening(name: str) -> None:
    unit = _unit(SYSTEMD / name)
    assert unit["ExecStart"] == [f"/opt/smartbox/venv/bin/smartbox {UNITS[name]}"]
    assert "/etc/smartbox/smartbox.env" in unit["EnvironmentFile"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["User"] == ["smartbox"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] and all(
        p.startswith("/var/lib/smartbox/") for p in unit["ReadWritePaths"]
    )
    assert unit["CapabilityBoundingSet"] == [""]


def test_receiver_spool_is_writable_and_per_trust() -> None:
    unit = _unit(SYSTEMD / "smartbox-receiver@.service")
    env = dict(v.split("=", 1) for v in unit["Environment"])
    assert env["SMARTBOX_SPOOL_DIR"] == "/var/lib/smartbox/spool/%i"
    assert unit["ReadWritePaths"] == ["/var/lib/smartbox/spool/%i"]
    assert "/etc/smartbox/receiver-%i.env" in unit["EnvironmentFile"]


def test_metrics_ports_match_prometheus() -> None:
    text = PROM_CONFIG.read_text()
    for name, port in (("anonymiser", 9101), ("exporter", 9102), ("ingest", 9103)):
        env = dict(
            v.split("=", 1) for v in _unit(SYSTEMD / f"smartbox-{name}.service")["Environment"]
        )
        assert env["SMARTBOX_METRICS_PORT"] == str(port)
        assert f'"{name}:{port}"' in text


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    paths = []
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace("/opt/smartbox/venv/bin/smartbox", "/bin/true")
        target = tmp_path / name.replace("@.", "@RTK.")
        target.write_text(text)
        paths.append(str(target))
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [ln for ln in (res.stdout + res.stderr).splitlines() if str(tmp_path) in ln]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr
