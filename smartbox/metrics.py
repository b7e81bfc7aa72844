"""Prometheus metrics shared by every smartbox process, and the tiny HTTP server for them.

Every metric is labelled by ``trust`` (the trust code, never patient data) and, where it
matters, by ``stage``. Names are the contract with ``deploy/grafana`` and ``deploy/prometheus``:
the tests there parse this module, so a rename breaks them loudly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

# --- receiver -------------------------------------------------------------------------------
ASSOCIATIONS = Counter(
    "smartbox_associations_total",
    "DICOM associations by outcome (accepted, or rejected with a reason)",
    ["trust", "result"],
)
INSTANCES_RECEIVED = Counter(
    "smartbox_instances_received_total", "Instances stored durably in the spool", ["trust"]
)
BYTES_RECEIVED = Counter(
    "smartbox_bytes_received_total", "Bytes of instances stored in the spool", ["trust"]
)
CSTORE_STATUS = Counter(
    "smartbox_cstore_status_total", "C-STORE responses by status code (hex)", ["trust", "status"]
)
DUPLICATES = Counter(
    "smartbox_duplicate_instances_total",
    "Instances received again: same bytes (dropped) or new version (kept)",
    ["trust", "kind"],
)
STUDIES_ARRIVED = Counter(
    "smartbox_studies_arrived_total",
    "study.arrived events confirmed by the broker (amendments included)",
    ["trust"],
)
INSTANCES_PUBLISHED = Counter(
    "smartbox_instances_published_total",
    "Instances uploaded to quarantine and announced in a confirmed study.arrived",
    ["trust"],
)
SPOOL_BYTES = Gauge("smartbox_spool_bytes", "Bytes held in the receiver spool", ["trust"])
SPOOL_FILES = Gauge("smartbox_spool_files", "Files held in the receiver spool", ["trust"])
SPOOL_HIGH_WATER = Gauge(
    "smartbox_spool_high_water_bytes",
    "Spool size at which the receiver answers C-STORE with 0xA700 (spool_high_water_bytes)",
    ["trust"],
)
OLDEST_UNPUBLISHED = Gauge(
    "smartbox_oldest_unpublished_age_seconds",
    "Age of the oldest received instance not yet announced in study.arrived",
    ["trust"],
)
RELAY_RETRIES = Counter(
    "smartbox_relay_retries_total", "Outbox relay retries after a transient failure", ["trust"]
)
STUDY_COMPLETION = Histogram(
    "smartbox_study_completion_seconds",
    "First instance received to study.arrived confirmed",
    ["trust"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)

# --- anonymiser ---------------------------------------------------------------------------
INSTANCES_STAGED = Counter(
    "smartbox_instances_staged_total", "De-identified instances written to staging", ["trust"]
)
STUDIES_STAGED = Counter(
    "smartbox_studies_staged_total", "study.staged events confirmed by the broker", ["trust"]
)
INSTANCES_HELD_BACK = Counter(
    "smartbox_instances_held_back_total",
    "Instances held back (never staged, never exported), by reason code",
    ["trust", "reason"],
)
NHS_FALLBACK = Counter(
    "smartbox_nhs_number_fallback_total",
    "Instances whose patient pseudonym fell back to the trust-scoped local id",
    ["trust"],
)

# --- exporter / national ingest -------------------------------------------------------------
STUDIES_PENDING_EXPORT = Gauge(
    "smartbox_studies_pending_export", "Staged studies waiting for the export window", ["trust"]
)
INSTANCES_EXPORTED = Counter(
    "smartbox_instances_exported_total", "Instances copied to the national destination", ["trust"]
)
STUDIES_EXPORTED = Counter(
    "smartbox_studies_exported_total", "Studies included in a published export.batch", ["trust"]
)
EXPORT_BATCHES = Counter(
    "smartbox_export_batches_total",
    "Export passes by result (published, empty, failed)",
    ["result"],
)
EXPORT_RECEIPTS = Counter(
    "smartbox_export_receipts_total",
    "Receipts from the national ingest recorded by the exporter, by status",
    ["trust", "status"],
)
LAST_EXPORT_SUCCESS = Gauge(
    "smartbox_last_export_success_timestamp_seconds",
    "Unix time of the last export pass that completed without failure",
)
INSTANCES_INGESTED = Counter(
    "smartbox_instances_ingested_total",
    "Instances verified (sha256) and stored by the national ingest",
    ["trust"],
)
INGEST_CHECKSUM_FAILURES = Counter(
    "smartbox_ingest_checksum_failures_total",
    "Objects whose sha256 did not match the export batch manifest",
    ["trust"],
)

# --- every stage ----------------------------------------------------------------------------
FAILURES = Counter(
    "smartbox_failures_total",
    "Failures by stage and kind (transient: retried; permanent: dead-lettered or held back)",
    ["trust", "stage", "kind"],
)
MESSAGES_CONSUMED = Counter(
    "smartbox_messages_total",
    "Messages handled by a consumer, by outcome (ack, retry, dead_letter)",
    ["stage", "outcome"],
)
STAGE_SECONDS = Histogram(
    "smartbox_stage_duration_seconds",
    "Time to handle one message (one study) in a stage",
    ["trust", "stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
BUILD = Info("smartbox_build", "smartbox version and the process role")


class HealthState:
    """What ``/healthz`` and ``/readyz`` report: alive is the process; ready is its dependencies."""

    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], bool]] = {}
        self._lock = threading.Lock()

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        with self._lock:
            self._checks[name] = check

    def ready(self) -> tuple[bool, dict[str, bool]]:
        with self._lock:
            checks = dict(self._checks)
        results: dict[str, bool] = {}
        for name, check in checks.items():
            try:
                results[name] = bool(check())
            except Exception:  # noqa: BLE001 - a failing probe means not ready, never a crash
                results[name] = False
        return all(results.values()), results


def _handler_for(health: HealthState, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            elif path == "/readyz":
                ok, results = health.ready()
                body = "".join(f"{k} {'ok' if v else 'FAIL'}\n" for k, v in sorted(results.items()))
                self._send(200 if ok else 503, body.encode() or b"ok\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return  # scrapes every 15 s would drown the logs

    return Handler


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on a background thread."""

    def __init__(
        self,
        host: str,
        port: int,
        health: HealthState | None = None,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.health = health or HealthState()
        self._server = ThreadingHTTPServer((host, port), _handler_for(self.health, registry))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
