"""Every dashboard panel and every alert, proven on a real Prometheus against a running pipeline.

A real Prometheus scrapes, with ``deploy/prometheus/prometheus.yml``'s own jobs, every smartbox
process (three receivers, two anonymisers on one host, the exporter, the national ingest, a
trust's cohort process, the clinical stage) and
RabbitMQ's own ``rabbitmq_prometheus`` plugin on a dedicated node that is the pipeline's broker
(namespace ``smartbox``, as the queue selectors of the rules expect). Traffic goes through for
real: studies from two trusts over DICOM, one instance held back, a re-sent study, rejected
associations, a nightly-style export pass (its cron due every minute) acknowledged by the
national ingest. Then every target expression of every panel of every dashboard in
``deploy/grafana/dashboards`` (read from the JSON, so a new panel is covered without editing
this test) and every rule of ``deploy/prometheus/alerts.yml`` is evaluated through the HTTP API:
each must return a number, or, for an alert whose condition is false in a healthy pipeline, be
listed in ``QUIET`` with its inner series (a part of its expression, checked to be one), which
must then return a number. A third trust is configured and never sends: its per-trust series
exist at zero in every process from start-up.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.brokers import DedicatedRabbitMQ, rabbitmq_server_available
from helpers.clinical import NHS_A, NHS_BAD, identified, write_csv
from helpers.pipeline import Pipeline
from helpers.prometheus import DEPLOY, Prometheus, deploy_config, has_data, values
from helpers.util import wait_for

from smartbox.synthetic import make_ct_study

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
SENDING = ("RTK", "RGT")
SILENT = "RQX"  # configured, receiver running, never sends
#: Grafana's own variables, as a 24 h dashboard over 1 s scrapes would resolve them (5 min
#: covers the whole test, so every rate has its samples)
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "15s", "__range": "1h"}

#: alert -> (a part of its expression that must return data, why the alert itself is quiet)
QUIET: dict[str, tuple[str | tuple[str, ...], str]] = {
    "SmartboxReceiverDown": ('up{job="smartbox-receiver"}', "every receiver is up"),
    "SmartboxProbeDown": ('up{job="smartbox-probe"}', "the canary runs"),
    "SmartboxProbeFailing": (
        "sum by (trust, hop) (increase(smartbox_probe_failures_total[1h]))",
        "the probes pass (the failure series exist at zero from start-up)",
    ),
    "SmartboxProbeStale": (
        "smartbox_probe_last_success_timestamp_seconds",
        "the last probe passed seconds ago",
    ),
    "SmartboxReceiverOutOfResources": (
        "sum by (trust, status) (increase(smartbox_cstore_status_total"
        '{status=~"(?i)(0x)?a7[0-9a-f]{2}"}[5m]))',
        "no C-STORE was refused (0xA700 exists at zero from start-up)",
    ),
    "SmartboxCStoreFailureRatioHigh": (
        "sum by (trust) (rate(smartbox_cstore_status_total"
        '{status!~"(?i)(0x)?(0+|b[0-9a-f]{3})"}[15m]))'
        " / sum by (trust) (rate(smartbox_cstore_status_total[15m]))",
        "every C-STORE succeeded",
    ),
    "SmartboxTrustSilent": (
        "sum by (trust) (increase(smartbox_instances_received_total[4h]))",
        "the receivers have run for minutes, not 4 h (and it may be a weekend or night)",
    ),
    "SmartboxOldestUnpublishedAge": (
        "max by (trust) (smartbox_oldest_unpublished_age_seconds)",
        "every instance was published within seconds",
    ),
    "SmartboxSpoolGrowing": ("deriv(smartbox_spool_bytes[30m])", "the spool drains"),
    "SmartboxUploadLagging": (
        "max by (trust) (smartbox_receiver_upload_lag_seconds)",
        "every instance was uploaded within a second of its C-STORE",
    ),
    "SmartboxSpoolFilling": (
        "max by (trust) (smartbox_spool_bytes / smartbox_spool_high_water_bytes)",
        "a few MB against a high-water mark of 50 GiB",
    ),
    "SmartboxRelayRetrying": (
        "sum by (trust) (rate(smartbox_relay_retries_total[10m]))",
        "S3 and RabbitMQ are up: no retries",
    ),
    "SmartboxHeldBackRatioHigh": (
        "sum by (trust) (increase(smartbox_instances_held_back_total[1h]))"
        " / (sum by (trust) (increase(smartbox_instances_held_back_total[1h]))"
        " + (sum by (trust) (increase(smartbox_instances_staged_total[1h]))"
        " or 0 * sum by (trust) (increase(smartbox_instances_held_back_total[1h]))))",
        "one instance held back, below the 20 the alert needs",
    ),
    "SmartboxVerificationGateFailures": (
        "sum by (trust) (increase(smartbox_instances_held_back_total"
        '{reason="verification_failed"}[1h]))',
        "the de-identifier leaves nothing for the verification gate to find",
    ),
    "SmartboxNhsNumberFallbackHigh": (
        "sum by (trust) (increase(smartbox_nhs_number_fallback_total[6h]))"
        " / sum by (trust) (increase(smartbox_instances_staged_total[6h]))",
        "every synthetic study carries a valid NHS number",
    ),
    "SmartboxInstancesUnaccounted": (
        "smartbox:instances_unaccounted:increase24h",
        "every received instance was staged or held back",
    ),
    "SmartboxPermanentFailures": (
        'sum by (trust, stage) (increase(smartbox_failures_total{kind="permanent"}[15m]))',
        "nothing failed",
    ),
    "SmartboxTransientFailuresHigh": (
        'sum by (stage) (rate(smartbox_failures_total{kind="transient"}[10m]))',
        "nothing failed",
    ),
    "SmartboxMessagesDeadLettered": (
        'sum by (stage) (increase(smartbox_messages_total{outcome="dead_letter"}[15m]))',
        "nothing was dead-lettered",
    ),
    "SmartboxStageSlow": (
        "histogram_quantile(0.95,"
        " sum by (stage, le) (rate(smartbox_stage_duration_seconds_bucket[30m])))",
        "studies take seconds",
    ),
    "SmartboxExportOverdue": (
        "time() - max_over_time(smartbox_last_export_success_timestamp_seconds[27h])",
        "an export pass succeeded minutes ago",
    ),
    "SmartboxExportFailed": (
        'increase(smartbox_export_batches_total{result="failed"}[1h])',
        "every export pass succeeded",
    ),
    "SmartboxExportMissed": (
        "sum by (job, instance) (increase(smartbox_export_batches_total[25h]))",
        "passes run every minute here",
    ),
    "SmartboxExportLagHigh": (
        "max by (trust) (smartbox_oldest_pending_export_age_seconds)",
        "every staged study was exported within a minute",
    ),
    "SmartboxIngestChecksumFailures": (
        "sum by (trust) (increase(smartbox_ingest_checksum_failures_total[1h]))",
        "every object verified",
    ),
    "SmartboxExportedNotIngested": (
        "sum by (trust) (increase(smartbox_instances_exported_total[24h]))"
        " - (sum by (trust) (increase(smartbox_instances_ingested_total[24h]))"
        " or 0 * sum by (trust) (increase(smartbox_instances_exported_total[24h])))",
        "everything exported was ingested",
    ),
    "SmartboxQuarantineUnprocessed": (
        "max(smartbox_quarantine_unprocessed_old_batches)",
        "every quarantine batch was processed, and none is 30 days old",
    ),
    "SmartboxDeadLetterQueueNotEmpty": (
        'sum by (vhost, queue) (rabbitmq_queue_messages{queue=~"smartbox\\\\..+\\\\.dlq"})',
        "the dead-letter queues are empty",
    ),
    "SmartboxWorkQueueNoConsumer": (
        "sum by (vhost, queue) (rabbitmq_queue_consumers"
        '{queue=~"smartbox\\\\.(anonymiser|exporter|clinical|national\\\\.ingest)"})',
        "every work queue has its consumers",
    ),
    "SmartboxCohortDown": ('up{job="smartbox-cohort"}', "the cohort process is up"),
    "SmartboxRetrieveFailuresRising": (
        "sum by (trust, reason) (increase(smartbox_retrieve_failures_total[1h]))",
        "no cohort was submitted: nothing was asked of the archive",
    ),
    "SmartboxRetrieveStudiesFailed": (
        "sum by (trust) (increase(smartbox_retrieve_studies_failed_total[6h]))",
        "no study was given up",
    ),
    "SmartboxCohortStalled": (
        "sum by (trust) (smartbox_retrieve_active_cohorts)",
        "no cohort has work left",
    ),
    "SmartboxRetrieveRateLimited": (
        (
            "sum by (trust) (increase("
            'smartbox_retrieve_rate_limit_waits_total{limit="queries"}[1h]))',
            "sum by (trust) (increase("
            'smartbox_retrieve_rate_limit_waits_total{limit="instances"}[1h]))',
        ),
        "nothing waited for a token bucket",
    ),
    "SmartboxClinicalStageDown": ('up{job="smartbox-clinical"}', "the clinical stage is up"),
    "SmartboxClinicalHeldBackRatioHigh": (
        "sum by (trust) (increase(smartbox_clinical_records_held_back_total[6h]))",
        "one row of two held back: fewer than the alert's 10",
    ),
    "SmartboxClinicalRecordsRejected": (
        "sum by (trust, reason) (increase(smartbox_clinical_records_rejected_total[1h]))",
        "the national ingest accepted every clinical record",
    ),
    "SmartboxWorkQueueBacklog": (
        "sum by (vhost, queue) (rabbitmq_queue_messages_ready"
        '{queue=~"smartbox\\\\.(anonymiser|exporter)"})',
        "the queues are drained",
    ),
}
#: what the silent trust must show, at zero, from each process: job -> (metric, extra labels)
ZERO_FROM_START: dict[str, list[tuple[str, str]]] = {
    "smartbox-receiver": [
        ("smartbox_instances_received_total", ""),
        ("smartbox_studies_arrived_total", ""),
        ("smartbox_cstore_status_total", 'status="0xA700"'),
    ],
    "smartbox-anonymiser": [
        ("smartbox_instances_staged_total", ""),
        ("smartbox_instances_held_back_total", 'reason="verification_failed"'),
    ],
    "smartbox-exporter": [
        ("smartbox_studies_pending_export", ""),
        ("smartbox_instances_exported_total", ""),
    ],
    "smartbox-ingest": [("smartbox_instances_ingested_total", "")],
}


#: RTK's archive: nothing listens there, and no cohort asks it for anything
RETRIEVE = """
[retrieve]
[[retrieve.archives]]
name = "pacs"
ae_title = "RTK_PACS"
host = "127.0.0.1"
port = 9
window_start = "0 0 * * *"
window_hours = 24
timezone = "UTC"
"""


def flat(expr: str) -> str:
    return " ".join(expr.split())


def panel_queries() -> list[tuple[str, str]]:
    """(dashboard: panel: refId, expression with variables substituted) for every target."""
    out = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        variables = dict(GRAFANA_VARIABLES)
        for var in dash.get("templating", {}).get("list", []):
            if var.get("type") in ("query", "custom"):
                assert var.get("includeAll") and "allValue" in var, (path.name, var["name"])
                variables[var["name"]] = var["allValue"]  # the dashboard showing "All"

        def substitute(expr: str, variables: dict[str, str] = variables) -> str:
            def one(m: re.Match[str]) -> str:
                name = m.group(1) or m.group(2)
                assert name in variables, f"unknown variable ${name} in {expr}"
                return variables[name]

            return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)

        def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for panel in panels:
                yield panel
                yield from walk(panel.get("panels", []))

        for panel in walk(dash["panels"]):
            for target in panel.get("targets", []):
                where = f"{path.name}: {panel['title']}: {target.get('refId', '?')}"
                out.append((where, substitute(target["expr"])))
    assert out, "no dashboard panels found"
    return out


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DedicatedRabbitMQ]:
    """A RabbitMQ node of this test's own, with rabbitmq_prometheus on a port of its own."""
    if not rabbitmq_server_available():
        from conftest import missing

        missing("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    node = DedicatedRabbitMQ(tmp_path / "rabbitmq", prometheus=True)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def hub(tmp_path: Path, broker: DedicatedRabbitMQ, s3_server, dcmtk) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path / "hub", broker.url, "smartbox", s3_server)
    p.extra_env = {"SMARTBOX_EXPORT_SCHEDULE": "* * * * *", "SMARTBOX_EXPORT_WINDOW_END": "none"}
    try:
        yield p
    finally:
        p.stop_all()


def send_traffic(p: Pipeline, tmp_path: Path) -> dict[str, int]:
    """Studies from the sending trusts (one instance held back, one study sent twice) and 11
    rejected associations; returns the instances to be staged, per trust."""
    study = make_ct_study(710, series=1, per_series=4)
    study.datasets[0].BurnedInAnnotation = "YES"  # the pixel gate holds it back
    assert p.storescu("RTK", study.write(tmp_path / "send" / "RTK")).returncode == 0
    files = make_ct_study(711, series=2, per_series=2).write(tmp_path / "send" / "RGT")
    for _ in range(2):  # the second time: identical duplicates
        assert p.storescu("RGT", files).returncode == 0
    for _ in range(11):  # SmartboxAssociationsRejected: more than 10 in 15 min
        refused = subprocess.run(
            ["/usr/bin/echoscu", "-aet", "NOT_A_PACS", "-aec", "SMARTBOX_RTK"]
            + ["127.0.0.1", str(p.trusts["RTK"])],
            capture_output=True,
            timeout=30,
        )
        assert refused.returncode != 0
    # clinical records: one accepted, one held back (check digit); the export carries it
    rows = [identified(NHS_A), identified(NHS_BAD)]
    path = write_csv(tmp_path / "clinical.csv", rows)
    sub = p.run_cli("clinical", "submit", "--trust", "RTK", str(path))
    assert sub.returncode == 3, sub.stdout + sub.stderr  # 3: some rows held back
    return {"RTK": 3, "RGT": 4}


def per_trust(prom: Prometheus, expr: str) -> dict[str, float]:
    """trust -> value of an expression's series (empty while Prometheus is not answering)."""
    try:
        rows = prom.query(expr)
    except (OSError, AssertionError):
        return {}
    return {row["metric"].get("trust", ""): v for row, v in zip(rows, values(rows), strict=True)}


def test_every_panel_and_alert_returns_data(
    hub: Pipeline, broker: DedicatedRabbitMQ, tmp_path: Path
) -> None:
    p = hub
    for code in (*SENDING, SILENT):
        p.add_trust(code, extra="workers = 1\n" + (RETRIEVE if code == "RTK" else ""))
    p.start_all()
    # RTK's cohort process (no cohort submitted: its series exist at zero from start-up) and
    # the clinical stage, fed by a clinical submission in the traffic
    p.start("cohort-RTK", "cohort", "run", "--trust", "RTK")
    p.start("clinical", "clinical", "stage")
    p.start("anonymiser-2", "anonymise")  # two anonymisers on one host, each scraped
    # the canary, as deploy/systemd/smartbox-probe.service runs it (a shorter round)
    p.start("probe", "probe", "--trust", "RTK", "--every", "10s", "--timeout", "60")
    local = "127.0.0.1:{}".format
    rabbit = [(local(broker.prometheus_port), {})]
    targets = {
        "smartbox-receiver": [
            (local(p.procs[f"receiver-{c}"].metrics_port), {"trust": c}) for c in p.trusts
        ],
        "smartbox-anonymiser": [
            (local(p.procs[name].metrics_port), {}) for name in ("anonymiser", "anonymiser-2")
        ],
        "smartbox-exporter": [(local(p.procs["exporter"].metrics_port), {})],
        "smartbox-ingest": [(local(p.procs["ingest"].metrics_port), {})],
        "smartbox-probe": [(local(p.procs["probe"].metrics_port), {})],
        "smartbox-cohort": [(local(p.procs["cohort-RTK"].metrics_port), {"trust": "RTK"})],
        "smartbox-clinical": [(local(p.procs["clinical"].metrics_port), {})],
        "rabbitmq": rabbit,
        "rabbitmq-per-object": rabbit,
        "minio": [],  # the tests' S3 server is SeaweedFS: no panel or rule reads MinIO's series
    }
    prom = Prometheus(tmp_path / "prometheus")
    prom.start(deploy_config(targets, [DEPLOY / "alerts.yml"]))
    try:
        # every target scraped before the traffic: the counters' rise is then seen, not only
        # their final value (Prometheus applies new targets within ~5 s of start)
        n_targets = sum(len(t) for t in targets.values())
        wait_for(
            lambda: values(up := prom.query("up")) == [1.0] * n_targets and len(up) == n_targets,
            60,
            "every target to be up",
        )
        staged = send_traffic(p, tmp_path)
        expected = {**staged, SILENT: 0.0}
        wait_for(
            lambda: (
                per_trust(prom, "sum by (trust) (smartbox_instances_ingested_total)") == expected
                and per_trust(prom, "sum by (trust) (smartbox_export_studies_acknowledged_total)")
                == {"RTK": 1, "RGT": 1, SILENT: 0}
            ),
            240,
            "Prometheus to see every staged instance ingested and acknowledged nationally",
            interval=1,
        )
        assert values(prom.query("up")) == [1.0] * n_targets
        assert per_trust(prom, "sum by (trust) (smartbox_instances_staged_total)") == expected
        assert per_trust(
            prom,
            'sum by (trust) (smartbox_instances_held_back_total{reason="burned_in_annotation"})',
        ) == {"RTK": 1, "RGT": 0, SILENT: 0}

        for job, series in ZERO_FROM_START.items():
            for name, labels in series:
                rows = prom.query(f'{name}{{job="{job}",trust="{SILENT}",{labels}}}')
                assert rows and values(rows) == [0.0] * len(rows), (job, name, rows)
        assert len(prom.query(f'smartbox_instances_staged_total{{trust="{SILENT}"}}')) == 2

        empty_panels = [
            (where, expr, rows[:3])
            for where, expr in panel_queries()
            if not has_data(rows := prom.query(expr))
        ]
        assert not empty_panels, f"dashboard panels without data: {empty_panels}"

        unproven = []
        for rule in rules():
            name = rule.get("alert") or rule["record"]
            if "record" in rule:
                if not has_data(prom.query(rule["record"])):
                    unproven.append(f"recording rule {name}")
                continue
            if has_data(prom.query(rule["expr"])):
                continue
            assert name in QUIET, (
                f"alert {name} returns nothing: make the traffic fire it or list it in QUIET"
            )
            inners, _why = QUIET[name]
            # an alert name with several rules (one per label value) lists one inner per rule
            found = [
                i
                for i in ([inners] if isinstance(inners, str) else inners)
                if flat(i) in flat(rule["expr"])
            ]
            assert found, f"QUIET[{name}] is not part of its expression"
            inner = found[0]
            if not has_data(prom.query(inner)):
                unproven.append(f"alert {name}: {inner}")
        assert not unproven, f"rules whose series do not exist: {unproven}"

        # the silent trust is in the silent-trust alert's series from start-up, at zero
        silent = per_trust(prom, QUIET["SmartboxTrustSilent"][0])
        assert silent[SILENT] == 0 and silent["RTK"] > 0
        rejected = next(r for r in rules() if r.get("alert") == "SmartboxAssociationsRejected")
        assert set(per_trust(prom, rejected["expr"])) == {"RTK"}  # fired by the traffic

        groups = prom.api("rules")["groups"]
        bad = [
            (r["name"], r.get("lastError"))
            for g in groups
            for r in g["rules"]
            if r["health"] == "err"
        ]
        assert not bad, bad
    finally:
        prom.stop()


pytestmark = pytest.mark.e2e
