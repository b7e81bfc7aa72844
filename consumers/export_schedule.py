"""When the exporter works: export passes on a cron schedule in a time zone, and between
them the gauges it keeps (pending studies, unprocessed quarantine), re-read from storage."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from croniter import croniter

from smartbox import metrics
from smartbox.errors import SmartboxError

if TYPE_CHECKING:
    from .exporter import Exporter

log = logging.getLogger("consumers.exporter")


class Schedule:
    """A cron schedule in a time zone (default nightly at 01:00 Europe/London)."""

    def __init__(self, expression: str, timezone: str) -> None:
        if not croniter.is_valid(expression):
            raise ValueError(f"not a cron expression: {expression!r}")
        self.expression = expression
        self.tz = ZoneInfo(timezone)

    def next_after(self, now: datetime | None = None) -> datetime:
        base = now or datetime.now(self.tz)
        nxt: datetime = croniter(self.expression, base.astimezone(self.tz)).get_next(datetime)
        return nxt


def run_scheduler(
    exporter: Exporter,
    schedule: Schedule,
    stop: threading.Event,
    *,
    scan_every: float = 3600.0,
) -> None:
    """Run export passes on the schedule until ``stop``; a failed pass is retried next time.
    The gauges are re-read from storage every 10 minutes meanwhile (never per message), and
    quarantine is scanned for unprocessed old batches every ``scan_every`` seconds."""
    next_scan = 0.0

    def maybe_scan() -> None:
        nonlocal next_scan
        if time.monotonic() < next_scan:
            return
        next_scan = time.monotonic() + scan_every
        try:
            exporter.scan_quarantine()
        except SmartboxError as exc:
            log.warning("quarantine not scanned: %s", exc)

    maybe_scan()
    while not stop.is_set():
        nxt = schedule.next_after()
        log.info("next export pass at %s", nxt.isoformat())
        while not stop.is_set():
            remaining = (nxt - datetime.now(schedule.tz)).total_seconds()
            if remaining <= 0:
                break
            if stop.wait(min(remaining, 600.0)):
                return
            try:
                exporter.restore_state()
            except SmartboxError as exc:
                log.warning("export gauges not refreshed: %s", exc)
            maybe_scan()
        if stop.is_set():
            return
        try:
            summary = exporter.export_pass()
            log.info("scheduled export: %d instances", summary.total_instances)
        except Exception:  # noqa: BLE001 - the next window retries; the queue remains
            log.exception("scheduled export pass failed")
            metrics.EXPORT_BATCHES.labels("failed").inc()
