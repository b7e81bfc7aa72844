"""Prometheus metrics shared by every smartbox process, and the tiny HTTP server for them.

Every metric is labelled by ``trust`` (the trust code, never patient data) and, where it
matters, by ``stage``. Names are the contract with ``deploy/grafana`` and ``deploy/prometheus``:
the tests there parse this module, so a rename breaks them loudly.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
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

from .errors import ConfigError

log = logging.getLogger(__name__)

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
UPLOAD_BACKLOG = Gauge(
    "smartbox_receiver_upload_backlog_instances",
    "Instances in the spool not yet uploaded to quarantine (the relay uploads while receiving)",
    ["trust"],
)
UPLOAD_BACKLOG_BYTES = Gauge(
    "smartbox_receiver_upload_backlog_bytes",
    "Bytes in the spool not yet uploaded to quarantine",
    ["trust"],
)
UPLOAD_LAG = Gauge(
    "smartbox_receiver_upload_lag_seconds",
    "Age of the oldest instance not yet uploaded to quarantine (0: none waiting)",
    ["trust"],
)
INTAKE_PACE = Gauge(
    "smartbox_receiver_intake_pace_seconds",
    "How long each C-STORE response is held back while uploads to quarantine lag behind and "
    "progress (0: not paced; producers/receiver/pace.py)",
    ["trust"],
)
PACED_SECONDS = Counter(
    "smartbox_receiver_paced_seconds_total",
    "Time C-STORE responses were held back by intake pacing (senders slowed to the upload rate)",
    ["trust"],
)
LEDGER_PRUNED = Counter(
    "smartbox_receiver_ledger_pruned_total",
    "Ledger rows of published instances forgotten after ledger_retention_days",
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
INSTANCES_PROCESSED = Counter(
    "smartbox_anonymiser_instances_processed_total",
    "Instances this anonymiser de-identified or held back (its share of the work; a batch "
    "announced in chunks is shared by several anonymisers)",
    ["trust"],
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

BYTES_PENDING_EXPORT = Gauge(
    "smartbox_bytes_pending_export", "Bytes of staged studies waiting for export", ["trust"]
)
OLDEST_PENDING_EXPORT = Gauge(
    "smartbox_oldest_pending_export_age_seconds",
    "Age of the oldest staged study waiting for export (0: none)",
    ["trust"],
)
EXPORT_TRUST_BATCHES = Counter(
    "smartbox_export_trust_batches_total", "Signed export batches published, per trust", ["trust"]
)
STUDIES_ACKNOWLEDGED = Counter(
    "smartbox_export_studies_acknowledged_total",
    "Study versions accepted by the national side (counted once each)",
    ["trust"],
)
STUDIES_REJECTED = Counter(
    "smartbox_export_studies_rejected_total",
    "Study versions rejected by the national side (or never answered), by reason",
    ["trust", "reason"],
)
STUDIES_RESENT = Counter(
    "smartbox_export_studies_resent_total",
    "Study versions exported again after a rejection",
    ["trust"],
)
STUDIES_DEAD = Counter(
    "smartbox_export_studies_failed_total",
    "Study versions set aside after max_attempts (dead marker, smartbox reconcile), by reason",
    ["trust", "reason"],
)
STUDIES_REPLAYED = Counter(
    "smartbox_export_studies_replayed_total",
    "Set-aside study versions queued for one more round by an operator (smartbox dlq replay)",
    ["trust"],
)
EXPORT_BAD_OBJECTS = Counter(
    "smartbox_export_bad_objects_total",
    "Staged studies set aside from a batch because an object is missing or wrong, by reason",
    ["trust", "reason"],
)
WITHDRAWALS = Counter(
    "smartbox_withdrawals_total",
    "Withdrawals by step (requested, removed_unexported, published, acknowledged, held_back)",
    ["trust", "step"],
)
RETENTION_DELETED = Counter(
    "smartbox_retention_deleted_objects_total",
    "Objects deleted by retention, by bucket and why",
    ["bucket", "why"],
)
QUARANTINE_UNPROCESSED_OLD = Gauge(
    "smartbox_quarantine_unprocessed_old_batches",
    "Quarantine batches past the alert age that were never processed (kept, never expired)",
)
INGEST_STUDIES = Counter(
    "smartbox_ingest_studies_total",
    "Study versions answered by the national ingest, by status and reason",
    ["trust", "status", "reason"],
)

# --- clinical records (consumers.clinical) -------------------------------------------------
CLINICAL_ACCEPTED = Counter(
    "smartbox_clinical_records_accepted_total",
    "Clinical record versions staged and recorded for export (clinical stage)",
    ["trust"],
)
CLINICAL_HELD_BACK = Counter(
    "smartbox_clinical_records_held_back_total",
    "Clinical rows held back, by reason (from each submission's report; withdrawn: at staging)",
    ["trust", "reason"],
)
CLINICAL_DUPLICATES = Counter(
    "smartbox_clinical_records_duplicate_total",
    "Clinical record versions received again (a resubmitted file, a redelivery): not re-staged",
    ["trust"],
)
CLINICAL_EXPORTED = Counter(
    "smartbox_clinical_records_exported_total",
    "Clinical record versions sent in a signed national batch (re-sends included)",
    ["trust"],
)
CLINICAL_ACKNOWLEDGED = Counter(
    "smartbox_clinical_records_acknowledged_total",
    "Clinical record versions accepted by the national ingest",
    ["trust"],
)
CLINICAL_REJECTED = Counter(
    "smartbox_clinical_records_rejected_total",
    "Clinical record versions the national ingest rejected, by reason (sent again)",
    ["trust", "reason"],
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

# --- smartbox probe (the canary) ------------------------------------------------------------
PROBE_SECONDS = Gauge(
    "smartbox_probe_seconds",
    "Duration of each hop of the last probe of a trust (hop: store, staged, recorded, exported, "
    "acknowledged; a hop that failed keeps its previous value)",
    ["trust", "hop"],
)
PROBE_FAILURES = Counter(
    "smartbox_probe_failures_total", "Probes that failed, by the hop that failed", ["trust", "hop"]
)
PROBE_INSTANCES_RECEIVED = Counter(
    "smartbox_probe_instances_received_total",
    "Probe instances a receiver stored (smartbox.canary), not in smartbox_instances_received_"
    "total: a canary must not make a silent trust look busy",
    ["trust"],
)
PROBE_LAST_SUCCESS = Gauge(
    "smartbox_probe_last_success_timestamp_seconds",
    "Unix time the last probe of a trust passed every hop",
    ["trust"],
)

# --- cohort retrieval (smartbox cohort run): per trust, never per cohort or patient -------
RETRIEVE_QUERIES = Counter(
    "smartbox_retrieve_queries_total",
    "C-FIND requests to a trust's archive, by result (ok, failed)",
    ["trust", "result"],
)
RETRIEVE_STUDIES_FOUND = Counter(
    "smartbox_retrieve_studies_found_total",
    "Studies a cohort's queries found that match its filters (to retrieve)",
    ["trust"],
)
RETRIEVE_STUDIES_FILTERED = Counter(
    "smartbox_retrieve_studies_filtered_total",
    "Studies found but not wanted (modality, body part, description)",
    ["trust"],
)
RETRIEVE_STUDIES_RETRIEVED = Counter(
    "smartbox_retrieve_studies_retrieved_total",
    "Studies the archive moved to the trust's receiver (every sub-operation done), or that "
    "the receiver already held",
    ["trust"],
)
RETRIEVE_INSTANCES = Counter(
    "smartbox_retrieve_instances_total",
    "Instances the archive reported retrieved to the receiver (C-MOVE or C-GET sub-operations)",
    ["trust"],
)
RETRIEVE_FAILURES = Counter(
    "smartbox_retrieve_failures_total",
    "Failed query or move attempts, by reason (retried with backoff until max_attempts)",
    ["trust", "reason"],
)
RETRIEVE_STUDIES_FAILED = Counter(
    "smartbox_retrieve_studies_failed_total",
    "Studies given up after max_attempts (smartbox cohort report lists them with reasons)",
    ["trust"],
)
RETRIEVE_RATE_LIMIT_WAITS = Counter(
    "smartbox_retrieve_rate_limit_waits_total",
    "Requests that waited for the archive's token bucket (limit: instances, queries)",
    ["trust", "limit"],
)
RETRIEVE_ACTIVE_COHORTS = Gauge(
    "smartbox_retrieve_active_cohorts",
    "Cohorts with patients to query or studies to retrieve",
    ["trust"],
)
RETRIEVE_WINDOW_OPEN = Gauge(
    "smartbox_retrieve_window_open",
    "1 while at least one archive of the trust is inside its off-peak window (or overridden)",
    ["trust"],
)

# --- series at zero from start-up -----------------------------------------------------------
_Labelled = Counter | Gauge | Histogram
#: per process role: what it counts per trust (labelled by ``trust`` alone)
TRUST_SERIES: dict[str, tuple[_Labelled, ...]] = {
    "receive": (
        INSTANCES_RECEIVED,
        BYTES_RECEIVED,
        STUDIES_ARRIVED,
        INSTANCES_PUBLISHED,
        RELAY_RETRIES,
        STUDY_COMPLETION,
        PROBE_INSTANCES_RECEIVED,
        PACED_SECONDS,
    ),
    "anonymise": (INSTANCES_STAGED, STUDIES_STAGED, NHS_FALLBACK),
    "export": (
        STUDIES_PENDING_EXPORT,
        BYTES_PENDING_EXPORT,
        OLDEST_PENDING_EXPORT,
        INSTANCES_EXPORTED,
        STUDIES_EXPORTED,
        EXPORT_TRUST_BATCHES,
        STUDIES_ACKNOWLEDGED,
        STUDIES_RESENT,
        CLINICAL_EXPORTED,
        CLINICAL_ACKNOWLEDGED,
    ),
    "ingest": (INSTANCES_INGESTED, INGEST_CHECKSUM_FAILURES),
    "cohort": (
        RETRIEVE_STUDIES_FOUND,
        RETRIEVE_STUDIES_FILTERED,
        RETRIEVE_STUDIES_RETRIEVED,
        RETRIEVE_INSTANCES,
        RETRIEVE_STUDIES_FAILED,
        RETRIEVE_ACTIVE_COHORTS,
        RETRIEVE_WINDOW_OPEN,
    ),
    "clinical": (CLINICAL_ACCEPTED, CLINICAL_DUPLICATES),
}
#: per consuming role: its ``stage`` label in smartbox_stage_duration_seconds, and its queue
#: role (the ``stage`` of smartbox_failures_total and smartbox_messages_total)
STAGES: dict[str, tuple[str, str]] = {
    "anonymise": ("anonymise", "anonymiser"),
    "export": ("export", "exporter"),
    "ingest": ("ingest", "national.ingest"),
    "clinical": ("clinical", "clinical"),
}
EXPORT_RESULTS = ("published", "empty", "failed")


def init_series(
    role: str,
    trusts: Iterable[str],
    labelled: Mapping[_Labelled, Iterable[str]] | None = None,
) -> None:
    """Create at zero every series ``role`` reports, for each trust it knows at start.

    A series that does not exist is not zero to Prometheus: ``rate``, ``increase`` and the
    alerts on them (a silent trust, a failure ratio) see nothing until the first event, and a
    dashboard misses the trust. ``labelled`` adds metrics whose second label is a closed
    vocabulary (held-back reasons, C-STORE statuses), every value of it for every trust."""
    from .bus import Outcome  # bus imports this module

    stage = STAGES.get(role)
    for trust in trusts:
        for metric in TRUST_SERIES[role]:
            metric.labels(trust)
        if stage is not None:
            STAGE_SECONDS.labels(trust, stage[0])
            for kind in ("permanent", "transient"):
                FAILURES.labels(trust, stage[1], kind)
        for metric, values in (labelled or {}).items():
            for value in values:
                metric.labels(trust, value)
    if stage is not None:
        for outcome in Outcome:
            MESSAGES_CONSUMED.labels(stage[1], outcome.value)
    if role == "export":
        for result in EXPORT_RESULTS:
            EXPORT_BATCHES.labels(result)


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


class _Server(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` whose request errors are one log line, not a traceback on
    stderr (``socketserver``'s default): a scraper or probe that gave up and closed its
    connection before the answer was written (BrokenPipe, reset) is routine under load."""

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("metrics: client went away: %s", exc.__class__.__name__)
            return
        log.warning("metrics: request failed: %s", exc.__class__.__name__)


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
        try:
            self._server = _Server((host, port), _handler_for(self.health, registry))
        except OSError as exc:  # in use, or an address this host does not have
            raise ConfigError(
                f"--metrics-port {port}: cannot listen on {host}:{port} ({exc.strerror}): "
                "another process holds it; choose another port (SMARTBOX_METRICS_PORT, "
                "0: any free port)"
            ) from None
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
