"""deploy/grafana: the dashboard is well-formed and covers what an SRE looks at first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "deploy" / "grafana"


@pytest.fixture(scope="module")
def dash() -> dict:
    return json.loads((GRAFANA / "dashboards" / "smartbox.json").read_text())


def test_dashboard_shape(dash: dict) -> None:
    assert dash["uid"] == "smartbox-overview"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "label_values(" in variables["trust"]["definition"]
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]


def test_dashboard_covers_the_essentials(dash: dict) -> None:
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for name in (
        "smartbox_instances_received_total",
        "smartbox_instances_staged_total",
        "smartbox_instances_exported_total",
        "smartbox_instances_held_back_total",
        "smartbox_spool_bytes",
        "smartbox_oldest_unpublished_age_seconds",
        "smartbox_cstore_status_total",
        "smartbox_associations_total",
        "smartbox_stage_duration_seconds_bucket",
        "smartbox_studies_pending_export",
        "smartbox_last_export_success_timestamp_seconds",
        "smartbox_ingest_checksum_failures_total",
        # cohort retrieval, per trust
        "smartbox_retrieve_queries_total",
        "smartbox_retrieve_studies_found_total",
        "smartbox_retrieve_studies_retrieved_total",
        "smartbox_retrieve_studies_failed_total",
        "smartbox_retrieve_instances_total",
        "smartbox_retrieve_failures_total",
        "smartbox_retrieve_rate_limit_waits_total",
        "smartbox_retrieve_active_cohorts",
        # clinical records, per trust
        "smartbox_clinical_records_accepted_total",
        "smartbox_clinical_records_held_back_total",
        "smartbox_clinical_records_exported_total",
    ):
        assert name in exprs, name
    per_trust = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert any('trust=~"$trust"' in e for e in per_trust)
    for e in per_trust:  # the new panels are per trust, filtered by the trust variable
        if "smartbox_retrieve_" in e or "smartbox_clinical_" in e:
            assert 'trust=~"$trust"' in e and "by (trust" in e, e


def test_provisioning_files() -> None:
    yaml = pytest.importorskip(
        "yaml", reason="PyYAML is not installed in the venv: provisioning YAML not parsed"
    )
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "smartbox.yml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/smartbox"
