"""The exporter's gauges (a mixin of ``Exporter``): pending studies and bytes per trust, the
age of the oldest, the last good pass, and quarantine batches never processed. Kept
incrementally per message and re-read from storage at start and every few minutes (by the
scheduler), never by listing everything per message."""

from __future__ import annotations

import logging
import time

from smartbox import layout, metrics
from smartbox.errors import NotFound, PermanentError
from smartbox.retention import unprocessed_batches
from smartbox.store import ObjectStore, get_json

from .export_policy import ExportPolicy
from .export_state import ExportState

log = logging.getLogger("consumers.exporter")


class GaugeKeeping:
    """Mixed into ``Exporter``: the state it reads is the exporter's."""

    store: ObjectStore
    staging: str
    quarantine: str | None
    state: ExportState
    policy: ExportPolicy
    _pending: dict[str, list[float]]

    # --- gauges -------------------------------------------------------------------------
    def restore_state(self) -> None:
        """Set the gauges from object storage (at start and now and then: never per message)."""
        try:
            metrics.LAST_EXPORT_SUCCESS.set(
                float(get_json(self.store, self.staging, layout.LAST_SUCCESS)["at"])
            )
        except (NotFound, KeyError, TypeError, ValueError, PermanentError):
            pass
        for code in self.state.trusts():
            studies = size = 0
            oldest: float | None = None
            for klass in layout.CLASSES:
                for _day, export_id in self.state.queued(code, klass):
                    record = self.state.get(code, export_id)
                    if record is None or record["state"] != "pending":
                        continue
                    studies += 1
                    size += record["bytes"]
                    oldest = min(oldest or record["recorded_at"], record["recorded_at"])
            self._pending[code] = [studies, size]
            self._set_gauges(code, oldest)

    def _set_gauges(self, code: str, oldest: float | None = None) -> None:
        studies, size = self._pending[code]
        metrics.STUDIES_PENDING_EXPORT.labels(code).set(max(studies, 0))
        metrics.BYTES_PENDING_EXPORT.labels(code).set(max(size, 0))
        if oldest is not None or studies <= 0:
            metrics.OLDEST_PENDING_EXPORT.labels(code).set(time.time() - oldest if oldest else 0)

    def scan_quarantine(self) -> int:
        """Set ``smartbox_quarantine_unprocessed_old_batches``: quarantine batches older than
        the alert age that were never processed (the daemon does it hourly; Prometheus alerts
        on it). Names nothing but counts in the log."""
        if self.quarantine is None:
            return 0
        old = unprocessed_batches(
            self.store,
            quarantine=self.quarantine,
            staging=self.staging,
            alert_seconds=self.policy.quarantine_alert_seconds,
        )
        metrics.QUARANTINE_UNPROCESSED_OLD.set(len(old))
        if old:
            log.warning(
                "%d quarantine batches older than %g days were never processed (kept, never "
                "expired): `smartbox purge-quarantine --dry-run` lists them",
                len(old),
                self.policy.quarantine_alert_seconds / 86400,
            )
        return len(old)

    def _oldest(self, code: str) -> float | None:
        for klass in layout.CLASSES:
            for _day, export_id in self.state.queued(code, klass):
                record = self.state.get(code, export_id)
                if record is not None and record["state"] == "pending":
                    return float(record["recorded_at"])
        return None
