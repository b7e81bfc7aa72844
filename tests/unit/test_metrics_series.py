"""Every process creates its per-trust series at zero at start, for every trust it knows, so a
configured trust is on the dashboard and in the alerts before its first event."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from smartbox.app import preflight
from smartbox.settings import Settings


def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(name: str, **labels: str) -> float | None:
    return samples().get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "trusts").mkdir()
    for code in ("RZA", "RZB"):
        (tmp_path / "trusts" / f"{code}.toml").write_text("# only the name matters here\n")
    return Settings.from_env({"SMARTBOX_TRUSTS_DIR": str(tmp_path / "trusts")})


def test_a_receiver_reports_its_trust_at_zero(settings: Settings) -> None:
    assert value("smartbox_instances_received_total", trust="RZR") is None
    preflight.init_series("receive", settings, trust="RZR")
    for name in (
        "smartbox_instances_received_total",
        "smartbox_bytes_received_total",
        "smartbox_studies_arrived_total",
        "smartbox_relay_retries_total",
        "smartbox_study_completion_seconds_count",
    ):
        assert value(name, trust="RZR") == 0, name
    assert value("smartbox_cstore_status_total", trust="RZR", status="0x0000") == 0
    assert value("smartbox_cstore_status_total", trust="RZR", status="0xA700") == 0
    assert value("smartbox_associations_total", trust="RZR", result="rejected_calling_ae") == 0
    assert value("smartbox_instances_received_total", trust="RZA") is None  # not its trust


def test_the_consumers_report_every_trust_file_at_zero(settings: Settings) -> None:
    preflight.init_series("anonymise", settings)
    preflight.init_series("export", settings)
    preflight.init_series("ingest", settings)
    for trust in ("RZA", "RZB"):
        assert value("smartbox_instances_staged_total", trust=trust) == 0
        assert value("smartbox_nhs_number_fallback_total", trust=trust) == 0
        for reason in ("verification_failed", "burned_in_annotation", "deid_error"):
            assert value("smartbox_instances_held_back_total", trust=trust, reason=reason) == 0
        assert (
            value("smartbox_failures_total", trust=trust, stage="anonymiser", kind="permanent") == 0
        )
        assert value("smartbox_studies_pending_export", trust=trust) == 0
        assert value("smartbox_instances_exported_total", trust=trust) == 0
        assert value("smartbox_instances_ingested_total", trust=trust) == 0
        assert value("smartbox_stage_duration_seconds_count", trust=trust, stage="export") == 0
    for result in ("published", "empty", "failed"):
        assert value("smartbox_export_batches_total", result=result) is not None
    assert value("smartbox_messages_total", stage="anonymiser", outcome="dead_letter") is not None


def test_a_missing_trusts_folder_is_no_trust(tmp_path: Path) -> None:
    settings = Settings.from_env({"SMARTBOX_TRUSTS_DIR": str(tmp_path / "absent")})
    assert preflight.trust_codes(settings.trusts_dir) == []
    preflight.init_series("ingest", settings)  # the national side may have no trust files
