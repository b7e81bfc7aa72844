"""One set of trusts everywhere: trusts/ is the source; compose, the Helm values, the systemd
examples and Prometheus (static and file-based discovery) must name the same trust codes, AE
titles and DICOM ports, and every process on a systemd host needs a metrics port of its own.
Every YAML file under deploy/ parses (Helm templates are checked by rendering them)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from smartbox.trusts import load_all_trusts

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
FILE_SD = DEPLOY / "prometheus" / "file_sd"
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed in the venv")


def trusts() -> dict[str, tuple[str, int]]:
    """code -> (AE title, port) from trusts/, through the receiver's own loader."""
    return {c: (t.ae_title, t.port) for c, t in load_all_trusts(ROOT / "trusts").items()}


def env_file(path: Path) -> dict[str, str]:
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    return dict(ln.split("=", 1) for ln in lines)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_every_yaml_file_parses() -> None:
    files = [
        p
        for p in sorted(DEPLOY.rglob("*.y*ml"))
        if p.suffix in {".yml", ".yaml"} and "templates" not in p.parts
    ]
    assert len(files) >= 10
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(d is not None for d in docs), path


def test_trusts_are_valid_and_distinct() -> None:
    found = trusts()
    assert found, "trusts/ has no trust file"
    assert len({ae for ae, _p in found.values()}) == len(found), "AE titles must differ"
    assert all(port for _ae, port in found.values()), "every example trust has a fixed port"


def test_compose_runs_a_receiver_per_trust_on_its_port() -> None:
    services = load(DEPLOY / "compose" / "docker-compose.yml")["services"]
    receivers = {
        s["command"][2]: s for s in services.values() if s.get("command", [""])[0] == "receive"
    }
    assert set(receivers) == set(trusts())
    for code, (_ae, port) in trusts().items():
        assert f"{port}:{port}" in receivers[code]["ports"], code


def test_helm_values_carry_the_trust_files() -> None:
    values = load(DEPLOY / "helm" / "smartbox" / "values.yaml")["trusts"]
    assert set(values) == set(trusts())
    for path in sorted((ROOT / "trusts").glob("*.toml")):
        file = tomllib.loads(path.read_text())
        assert {"code": path.stem, **values[path.stem]["file"]} == file, (
            f"deploy/helm/smartbox/values.yaml trusts.{path.stem}.file differs from {path}"
        )


def _sd_targets(name: str) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load(FILE_SD / f"smartbox-{name}.yml")
    return groups


def test_systemd_examples_and_file_sd_cover_every_trust_with_its_port() -> None:
    examples = {
        p.name.removeprefix("receiver-").removesuffix(".env.example"): p
        for p in SYSTEMD.glob("receiver-*.env.example")
    }
    assert set(examples) == set(trusts())
    ports = {code: env_file(p)["SMARTBOX_METRICS_PORT"] for code, p in examples.items()}
    discovered = {
        g["labels"]["trust"]: t.rsplit(":", 1)[1]
        for g in _sd_targets("receiver")
        for t in g["targets"]
    }
    assert discovered == ports
    static = load(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    [job] = [j for j in static if j["job_name"] == "smartbox-receiver"]
    assert {sc["labels"]["trust"] for sc in job["static_configs"]} == set(trusts())


def test_cohort_processes_cover_every_trust_in_systemd_file_sd_and_prometheus() -> None:
    """One cohort process per trust, as the receivers: an env example with its port, a file_sd
    target with the trust's label, a static target in the compose scrape config."""
    examples = {
        p.name.removeprefix("cohort-").removesuffix(".env.example"): p
        for p in SYSTEMD.glob("cohort-*.env.example")
    }
    assert set(examples) == set(trusts())
    ports = {code: env_file(p)["SMARTBOX_METRICS_PORT"] for code, p in examples.items()}
    discovered = {
        g["labels"]["trust"]: t.rsplit(":", 1)[1]
        for g in _sd_targets("cohort")
        for t in g["targets"]
    }
    assert discovered == ports
    for name in ("prometheus.yml", "prometheus-file-sd.yml"):
        jobs = {j["job_name"]: j for j in load(DEPLOY / "prometheus" / name)["scrape_configs"]}
        assert jobs["smartbox-cohort"]["honor_labels"] is True, name  # the trust label kept
        assert "smartbox-clinical" in jobs, name
    static = load(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    [job] = [j for j in static if j["job_name"] == "smartbox-cohort"]
    assert {sc["labels"]["trust"] for sc in job["static_configs"]} == set(trusts())


def test_one_metrics_port_per_process_on_a_systemd_host() -> None:
    ports: dict[str, str] = {}
    for example in sorted(SYSTEMD.glob("*-*.env.example")):  # receivers, anonymisers, cohorts
        ports[example.name] = env_file(example)["SMARTBOX_METRICS_PORT"]
    for unit in ("exporter", "ingest", "probe", "clinical"):
        text = (SYSTEMD / f"smartbox-{unit}.service").read_text()
        [line] = [
            ln for ln in text.splitlines() if ln.startswith("Environment=SMARTBOX_METRICS_PORT=")
        ]
        ports[unit] = line.rsplit("=", 1)[1]
    assert len(set(ports.values())) == len(ports), ports
    discovered = sorted(
        t.rsplit(":", 1)[1]
        for name in ("receiver", "anonymiser", "exporter", "ingest", "probe", "clinical", "cohort")
        for g in _sd_targets(name)
        for t in g["targets"]
    )
    assert discovered == sorted(ports.values()), "file_sd targets = the processes of the host"


def test_file_sd_config_and_targets_pass_promtool() -> None:
    """promtool reads the file_sd target files too: a typo in one fails here."""
    import shutil
    import subprocess

    from helpers.util import missing

    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool not installed (scripts/bootstrap --test installs prometheus)")
    res = subprocess.run(
        [str(promtool), "check", "config", str(DEPLOY / "prometheus" / "prometheus-file-sd.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr
