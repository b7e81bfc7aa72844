"""deploy/helm/smartbox: rendered by Helm's own engine (the Go SDK bundled in helm-python-sdk;
no cluster), linted, every object checked against the Kubernetes schemas (kubernetes-validate,
strict: an unknown or misspelt field fails), and the trust files it writes are the ones in
trusts/, validated by the receiver's own loader."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.util import missing

from consumers.deid.policy import PolicyBuilder
from smartbox.trusts import load_all_trusts, parse_trust

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "smartbox"
KUBERNETES = "1.30.0"  # the oldest minor the chart targets
SECRET_NAME = re.compile(r"KEY$|SECRET|PASSWORD|AMQP_URL|TOKEN", re.I)


def _helm():  # type: ignore[no-untyped-def]
    try:
        import helm_python
    except ImportError:
        missing("helm-python-sdk not installed (pip install -e '.[test]')")
    return helm_python


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object of the chart rendered as release ``smartbox`` in namespace ``smartbox``."""
    helm = _helm()
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values or {}, name="smartbox", namespace="smartbox")
    docs = []
    for name, text in files.items():
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def repo_trusts() -> dict[str, dict[str, Any]]:
    return {p.stem: tomllib.loads(p.read_text()) for p in sorted((ROOT / "trusts").glob("*.toml"))}


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, dep in objects(docs, "Deployment").items():
        spec = dep["spec"]["template"]["spec"]
        for c in spec["containers"]:
            yield name, c, spec


def test_lint_and_kubernetes_schemas() -> None:
    helm = _helm()
    lint = helm.lint(str(CHART))
    assert lint["errors"] == [], lint
    assert not [m for m in lint["messages"] if m["severity"] > 1], lint  # info only
    import kubernetes_validate

    docs = render({"ingest": {"enabled": True}, "networkPolicy": {"enabled": True}})
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    kinds = sorted(d["kind"] for d in docs)
    n = len(repo_trusts())
    r = len([t for t in repo_trusts().values() if "retrieve" in t])  # a cohort process each
    assert r == n  # every example trust has an archive to query
    # receivers, cohorts, anonymiser, exporter, clinical stage, ingest
    assert kinds.count("Deployment") == n + r + 4 and kinds.count("Service") == n
    assert kinds.count("PersistentVolumeClaim") == n + r and kinds.count("ConfigMap") == 2
    assert kinds.count("NetworkPolicy") == 1
    assert "NetworkPolicy" not in {d["kind"] for d in render()}


def test_a_receiver_deployment_and_service_per_trust() -> None:
    docs = render()
    deployments, services = objects(docs, "Deployment"), objects(docs, "Service")
    claims = objects(docs, "PersistentVolumeClaim")
    for code, trust in repo_trusts().items():
        name = f"smartbox-receiver-{code.lower()}"
        spec = deployments[name]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
        pod = spec["template"]["spec"]
        [c] = pod["containers"]
        assert c["args"] == ["receive", "--trust", code]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["dicom"] == trust["port"]
        assert {"name": "SMARTBOX_METRICS_PORT", "value": str(ports["metrics"])} in c["env"]
        [spool] = [v for v in pod["volumes"] if v["name"] == "spool"]
        assert spool["persistentVolumeClaim"]["claimName"] in claims
        svc = services[name]["spec"]
        assert svc["ports"] == [
            {"name": "dicom", "port": trust["port"], "targetPort": "dicom", "protocol": "TCP"}
        ]
        assert svc["selector"] == spec["selector"]["matchLabels"]
        # the receiver checks the PACS's source address: the Service must not rewrite it
        assert svc["type"] == "LoadBalancer" and svc["externalTrafficPolicy"] == "Local"


def test_a_cohort_deployment_per_trust_with_an_archive_beside_its_receiver() -> None:
    """The cohort process reads its receiver's ledger: the receiver's spool claim, mounted
    where the receiver has it, on the receiver's node; its own claim for the cohort database."""
    docs = render()
    deployments = objects(docs, "Deployment")
    claims = objects(docs, "PersistentVolumeClaim")
    for code in repo_trusts():
        spec = deployments[f"smartbox-cohort-{code.lower()}"]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
        pod = spec["template"]["spec"]
        [c] = pod["containers"]
        assert c["args"] == ["cohort", "run", "--trust", code]
        receiver = deployments[f"smartbox-receiver-{code.lower()}"]["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        [receiver_spool] = [v for v in receiver["volumes"] if v["name"] == "spool"]
        assert volumes["spool"] == receiver_spool
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        [receiver_c] = receiver["containers"]
        assert (
            mounts["spool"]
            == {m["name"]: m["mountPath"] for m in receiver_c["volumeMounts"]}["spool"]
        )
        state_claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
        assert state_claim in claims and state_claim != receiver_spool["persistentVolumeClaim"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["SMARTBOX_STATE_DIR"] == mounts["state"]
        [term] = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert (
            term["labelSelector"]["matchLabels"]
            == (deployments[f"smartbox-receiver-{code.lower()}"]["spec"]["selector"]["matchLabels"])
        )
    # a trust without [retrieve], or cohort.enabled false: no cohort process
    bare = {"name": "x", "ae_title": "SB_RZZ", "port": 11200, "allowed_callers": ["P"]}
    assert "smartbox-cohort-rzz" not in objects(
        render({"trusts": {"RZZ": {"file": bare}}}), "Deployment"
    )
    off = objects(render({"cohort": {"enabled": False}}), "Deployment")
    assert not [n for n in off if "-cohort-" in n]


def test_the_clinical_stage_deployment() -> None:
    deployments = objects(render(), "Deployment")
    [c] = deployments["smartbox-clinical"]["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["clinical", "stage"]
    assert {"name": "SMARTBOX_METRICS_PORT", "value": "9105"} in c["env"]
    assert "smartbox-clinical" not in objects(
        render({"clinical": {"enabled": False}}), "Deployment"
    )


def test_trust_files_in_the_configmap_are_the_repository_s() -> None:
    """What the chart writes is what trusts/ says, and the receiver's loader accepts it."""
    [cm] = [d for n, d in objects(render(), "ConfigMap").items() if n.endswith("-trusts")]
    rendered = {k.removesuffix(".toml"): tomllib.loads(v) for k, v in cm["data"].items()}
    assert rendered == repo_trusts(), "values.yaml trusts: must match trusts/*.toml"
    for code, text in cm["data"].items():
        parse_trust(Path(code), tomllib.loads(text))


def test_trust_file_with_tables_and_lists_of_tables_round_trips(tmp_path: Path) -> None:
    file = {
        "name": 'A "quoted" name, with <markup> & ünïcode',
        "ae_title": "SB_RZZ",
        "port": 11200,
        "allowed_callers": ["P1", "P2"],
        "allowed_networks": ["10.1.0.0/16", "192.0.2.7"],
        "quiet_seconds": 0.5,
        "spool_high_water_bytes": 53687091200,
        "deidentification": {
            "options": ["retain_uids"],
            "ocr": True,
            "mask_rules": [
                {
                    "manufacturer": "ACME",
                    "model": "X1",
                    "rows": 512,
                    "columns": 512,
                    "rectangles": [{"x": 0, "y": 0, "width": 512, "height": 40}, [0, 470, 512, 42]],
                }
            ],
        },
    }
    docs = render({"trusts": {"RZZ": {"file": file}}})
    [cm] = [d for n, d in objects(docs, "ConfigMap").items() if n.endswith("-trusts")]
    (tmp_path / "RZZ.toml").write_text(cm["data"]["RZZ.toml"])
    assert tomllib.loads(cm["data"]["RZZ.toml"]) == {"code": "RZZ", **file}
    trust = load_all_trusts(tmp_path)["RZZ"]
    policy = PolicyBuilder().for_trust(trust, runnable=False)  # what the anonymiser applies
    assert len(policy.mask_rules) == 1 and trust.allowed_networks == tuple(file["allowed_networks"])
    svc = objects(docs, "Service")["smartbox-receiver-rzz"]["spec"]
    assert svc["loadBalancerSourceRanges"] == ["10.1.0.0/16", "192.0.2.7/32"]


def test_consumers_replicas_probes_resources_and_secrets() -> None:
    docs = render({"anonymiser": {"replicas": 5}})
    deployments = objects(docs, "Deployment")
    assert deployments["smartbox-anonymiser"]["spec"]["replicas"] == 5
    assert deployments["smartbox-exporter"]["spec"]["replicas"] == 1
    assert "smartbox-ingest" not in deployments  # would acknowledge real exports: opt-in
    assert "smartbox-ingest" in objects(render({"ingest": {"enabled": True}}), "Deployment")
    for name, c, pod in containers(docs):
        metrics = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert c[probe]["httpGet"] == {"path": path, "port": "metrics"}, name
        assert {"name": "SMARTBOX_METRICS_PORT", "value": str(metrics)} in c["env"], name
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], name
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert {"secretRef": {"name": "smartbox-env"}} in c["envFrom"], name
        [key] = [v for v in pod["volumes"] if v["name"] == "pseudonym-key"]
        assert key["secret"]["secretName"] == "smartbox-pseudonym-key"
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["pseudonym-key"]["readOnly"] and mounts["trusts"]["readOnly"]
        assert not [e for e in c["env"] if SECRET_NAME.search(e["name"])], name
    [settings] = [d for n, d in objects(docs, "ConfigMap").items() if n.endswith("-settings")]
    assert settings["data"]["SMARTBOX_PSEUDONYM_KEY_FILE"] == "/run/secrets/smartbox/pseudonym.key"
    # probes and Prometheus come from outside the pod: not the loopback default
    assert settings["data"]["SMARTBOX_METRICS_HOST"] == "0.0.0.0"
    leaked = [k for k in settings["data"] if SECRET_NAME.search(k) and not k.endswith("_FILE")]
    assert leaked == [], "secrets belong in the Kubernetes Secret, not the ConfigMap"
    assert not objects(docs, "Secret"), "the chart never carries a secret value"


def test_bad_trust_values_fail_with_the_field_named() -> None:
    helm = _helm()
    with pytest.raises(helm.HelmError, match="2-8 upper-case"):
        render({"trusts": {"rgt": {"file": {"port": 1}}}})
    with pytest.raises(helm.HelmError, match=r"trusts\.RZZ\.file\.port"):
        render({"trusts": {"RZZ": {"file": {"name": "x"}}}})
