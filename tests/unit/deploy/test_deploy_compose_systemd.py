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
from helpers.util import missing

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "deploy" / "compose"
SYSTEMD = ROOT / "deploy" / "systemd"
PROM_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
SUBCOMMANDS = {"receive", "anonymise", "export", "ingest", "probe", "cohort", "clinical"}


def _yaml():  # type: ignore[no-untyped-def]
    return pytest.importorskip("yaml", reason="PyYAML is not installed in the venv: not parsed")


def test_compose_services_and_mounts() -> None:
    yaml = _yaml()
    doc = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"rabbitmq", "minio", "minio-init", "prometheus", "grafana"} <= set(services)
    smartbox = {n: s for n, s in services.items() if s.get("image") == "smartbox:dev"}
    assert {s["command"][0] for s in smartbox.values()} == SUBCOMMANDS
    trusts = {p.stem for p in (ROOT / "trusts").glob("*.toml")}
    assert {s["command"][2] for s in smartbox.values() if s["command"][0] == "receive"} == trusts
    cohorts = {s["command"][3]: s for s in smartbox.values() if s["command"][0] == "cohort"}
    assert set(cohorts) == trusts  # every example trust has a [retrieve] table
    receivers = {s["command"][2]: s for s in smartbox.values() if s["command"][0] == "receive"}
    for code, svc in cohorts.items():  # the receiver's ledger: the same spool volume
        assert svc["command"][:4] == ["cohort", "run", "--trust", code]
        [spool] = [v for v in receivers[code]["volumes"] if v.endswith(":/var/lib/smartbox/spool")]
        assert spool in svc["volumes"], code
        [state] = [v for v in svc["volumes"] if v.endswith(":/var/lib/smartbox/state")]
        assert state.split(":")[0] in doc["volumes"], code
    [clinical] = [s for s in smartbox.values() if s["command"][0] == "clinical"]
    assert clinical["command"][:2] == ["clinical", "stage"]
    for name, svc in smartbox.items():
        assert svc["build"]["dockerfile"] == "deploy/compose/Dockerfile", name
        assert (COMPOSE / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    for svc in services.values():  # every bind-mounted file exists
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (COMPOSE / src).exists(), src
    for svc in smartbox.values():  # the repository's trust files, not a copy
        assert "../../trusts:/etc/smartbox/trusts:ro" in svc["volumes"]
    assert (COMPOSE / doc["secrets"]["smartbox-env"]["file"]).is_file()


def test_prometheus_targets_match_compose_ports() -> None:
    yaml = _yaml()
    services = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["services"]
    prom = yaml.safe_load(PROM_CONFIG.read_text())
    targets = {
        t
        for job in prom["scrape_configs"]
        if job["job_name"].startswith("smartbox-")
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    } | {  # scaled services: every replica by DNS
        f"{name}:{sd['port']}"
        for job in prom["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
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
    "smartbox-anonymiser@.service": "anonymise",
    "smartbox-exporter.service": "export",
    "smartbox-ingest.service": "ingest",
    "smartbox-probe.service": "probe --every 15m $PROBE_TRUSTS",
    "smartbox-clinical.service": "clinical stage",
    "smartbox-cohort@.service": "cohort run --trust %i",
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


def test_cohort_unit_reads_its_receiver_s_ledger_and_keeps_its_own_database() -> None:
    """Per trust: the receiver's spool as the receiver's unit sets it (the ledger), a state
    directory of its own (the identifiable cohort database), a required per-trust env file
    (its metrics port), and no restart loop on a trust-file mistake (exit 2)."""
    from smartbox.settings import Settings

    unit = _unit(SYSTEMD / "smartbox-cohort@.service")
    receiver = _unit(SYSTEMD / "smartbox-receiver@.service")
    env = dict(v.split("=", 1) for v in unit["Environment"])
    spool = dict(v.split("=", 1) for v in receiver["Environment"])["SMARTBOX_SPOOL_DIR"]
    assert env["SMARTBOX_SPOOL_DIR"] == spool
    assert env["SMARTBOX_STATE_DIR"] == "/var/lib/smartbox/cohort"
    assert set(unit["ReadWritePaths"]) == {"/var/lib/smartbox/cohort", spool}
    assert "/etc/smartbox/cohort-%i.env" in unit["EnvironmentFile"]  # no '-': required
    assert "SMARTBOX_METRICS_PORT" not in env  # a shared default would collide
    assert unit["RestartPreventExitStatus"] == ["2"]
    assert "smartbox-receiver@%i.service" in unit["After"][0]
    # where the cohort process looks for the ledger is where the receiver keeps it
    settings = Settings.from_env({"SMARTBOX_SPOOL_DIR": spool.replace("%i", "RGT")})
    assert str(settings.spool_dir / "RGT") == "/var/lib/smartbox/spool/RGT/RGT"


def test_cohort_run_takes_its_metrics_port_and_address_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The unit and the compose service set SMARTBOX_METRICS_PORT/HOST, as for every daemon."""
    from smartbox.app.cli import build_parser

    monkeypatch.setenv("SMARTBOX_METRICS_PORT", "9131")
    monkeypatch.setenv("SMARTBOX_METRICS_HOST", "0.0.0.0")  # noqa: S104 - a container's
    args = build_parser().parse_args(["cohort", "run", "--trust", "RTH"])
    assert (args.metrics_port, args.metrics_host) == (9131, "0.0.0.0")  # noqa: S104
    monkeypatch.delenv("SMARTBOX_METRICS_PORT")
    monkeypatch.delenv("SMARTBOX_METRICS_HOST")
    args = build_parser().parse_args(["cohort", "run", "--trust", "RTH"])
    assert (args.metrics_port, args.metrics_host) == (None, "127.0.0.1")


def test_metrics_ports_match_prometheus() -> None:
    text = PROM_CONFIG.read_text()
    for name, port in (("exporter", 9102), ("ingest", 9103), ("probe", 9104), ("clinical", 9105)):
        env = dict(
            v.split("=", 1) for v in _unit(SYSTEMD / f"smartbox-{name}.service")["Environment"]
        )
        assert env["SMARTBOX_METRICS_PORT"] == str(port)
        assert f'"{name}:{port}"' in text


def test_anonymiser_instances_have_their_own_port_and_directory() -> None:
    """N anonymisers on one host: the port comes from a required per-instance env file."""
    unit = _unit(SYSTEMD / "smartbox-anonymiser@.service")
    assert "/etc/smartbox/anonymiser-%i.env" in unit["EnvironmentFile"]  # no '-': required
    env = dict(v.split("=", 1) for v in unit["Environment"])
    assert "SMARTBOX_METRICS_PORT" not in env  # a shared default would collide
    assert unit["ReadWritePaths"] == ["/var/lib/smartbox/anonymiser/%i"]
    ports = {}
    for example in sorted(SYSTEMD.glob("anonymiser-*.env.example")):
        n = int(example.name.split("-")[1].split(".")[0])
        values = dict(
            line.split("=", 1)
            for line in example.read_text().splitlines()
            if line and not line.startswith("#")
        )
        ports[n] = int(values["SMARTBOX_METRICS_PORT"])
    assert ports == {1: 9121, 2: 9122}  # 9120 + N


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        missing("systemd-analyze not installed (Debian: apt-get install systemd)")
    paths = []
    for name in [*UNITS, "smartbox-retention.service", "smartbox-retention.timer"]:
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


@pytest.mark.parametrize("name", sorted(UNITS))
def test_units_bind_metrics_to_loopback_explicitly(name: str) -> None:
    env = dict(v.split("=", 1) for v in _unit(SYSTEMD / name)["Environment"])
    assert env["SMARTBOX_METRICS_HOST"] == "127.0.0.1"


def test_compose_metrics_listen_in_the_container_and_publish_on_host_loopback() -> None:
    yaml = _yaml()
    services = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["services"]
    for name, svc in services.items():
        if svc.get("image") != "smartbox:dev":
            continue
        env = svc["environment"]
        assert env["SMARTBOX_METRICS_HOST"] == "0.0.0.0", name  # noqa: S104 - the container's
        port = env["SMARTBOX_METRICS_PORT"]
        if "deploy" in svc:  # scaled: one host port of a range per replica
            [published] = [p for p in svc["ports"] if p.endswith(f":{port}")]
            low, high = published.split(":")[1].split("-")
            assert published.startswith("127.0.0.1:") and low == port, name
            assert int(high) - int(low) + 1 >= svc["deploy"]["replicas"], name
        else:
            assert f"127.0.0.1:{port}:{port}" in svc["ports"], name


def test_retention_runs_daily_after_the_export_window_with_the_same_hardening() -> None:
    """Records compact and acknowledged originals go only when retention runs: a timer runs it
    every day, after the export window, as a hardened one-shot of a real CLI command."""
    from smartbox.app.cli import build_parser

    unit = _unit(SYSTEMD / "smartbox-retention.service")
    timer = _unit(SYSTEMD / "smartbox-retention.timer")
    assert unit["Type"] == ["oneshot"] and "Restart" not in unit
    assert timer["Unit"] == ["smartbox-retention.service"]
    assert timer["Persistent"] == ["yes"] and timer["OnCalendar"][0].startswith("*-*-* 06:")
    for key in ("NoNewPrivileges", "ProtectSystem", "CapabilityBoundingSet", "User"):
        assert unit[key] == _unit(SYSTEMD / "smartbox-exporter.service")[key], key
    [command] = unit["ExecStart"]
    args = build_parser().parse_args(command.split()[1:])
    assert args.command == "purge-quarantine" and args.staging_grace_days == 30
