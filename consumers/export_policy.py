"""The export policy: batch limits, window end, retries, fairness classes, retention graces.

One owner for these settings (the exporter, ``smartbox reconcile``, retention and the demo all
ask this module). They come from ``SMARTBOX_EXPORT_*`` / ``SMARTBOX_RETENTION_*`` environment
variables (or the secrets file), validated at start with the variable named. Which studies are
backfill is the trust file's to say (``classify``: ``backfill``, ``backfill_callers``,
``prospective_max_age_days``), from what the receiver recorded about each study.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from smartbox.errors import ConfigError
from smartbox.settings import environment
from smartbox.trusts import TrustConfig

DAY = 86400.0
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class ExportPolicy:
    """Limits and timings of export passes (defaults suit a nightly window)."""

    max_batch_studies: int = 500
    max_batch_bytes: int = 10 * 1024**3
    max_attempts: int = 3
    receipt_timeout_seconds: float = 6 * 3600.0
    window_end: time | None = time(6, 0)
    timezone: str = "Europe/London"
    lease_ttl_seconds: float = 120.0
    outstanding_max_age_seconds: float = 2 * DAY
    quarantine_grace_seconds: float = 7 * DAY
    quarantine_alert_seconds: float = 30 * DAY
    staging_grace_seconds: float = 7 * DAY
    #: where probe studies are exported (national store), alone and marked synthetic; None:
    #: they are never exported (``consumers.export_canary``)
    canary_bucket: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ExportPolicy:
        env = environment(environ)

        def number(name: str, default: float, lo: float, hi: float) -> float:
            raw = env.get(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"environment: {name}: expected a number") from None
            if not lo <= value <= hi:
                raise ConfigError(f"environment: {name}: must be from {lo:g} to {hi:g}")
            return value

        end_raw = env.get("SMARTBOX_EXPORT_WINDOW_END", "06:00").strip()
        window_end: time | None = None
        if end_raw and end_raw.lower() != "none":
            try:
                window_end = time.fromisoformat(end_raw)
            except ValueError:
                raise ConfigError(
                    "environment: SMARTBOX_EXPORT_WINDOW_END: HH:MM, or 'none'"
                ) from None
        canary = env.get("SMARTBOX_EXPORT_CANARY_BUCKET", "").strip() or None
        if canary is not None and not _BUCKET.match(canary):
            raise ConfigError(
                "environment: SMARTBOX_EXPORT_CANARY_BUCKET: an S3 bucket name "
                "(3-63 lower-case letters, digits, dots and hyphens)"
            )
        return cls(
            canary_bucket=canary,
            max_batch_studies=int(number("SMARTBOX_EXPORT_MAX_BATCH_STUDIES", 500, 1, 100_000)),
            max_batch_bytes=int(number("SMARTBOX_EXPORT_MAX_BATCH_BYTES", 10 * 1024**3, 1, 1e15)),
            max_attempts=int(number("SMARTBOX_EXPORT_MAX_ATTEMPTS", 3, 1, 100)),
            receipt_timeout_seconds=number(
                "SMARTBOX_EXPORT_RECEIPT_TIMEOUT_SECONDS", 6 * 3600.0, 1, 30 * DAY
            ),
            window_end=window_end,
            timezone=env.get("SMARTBOX_EXPORT_TIMEZONE", "Europe/London"),
            lease_ttl_seconds=number("SMARTBOX_EXPORT_LEASE_TTL_SECONDS", 120.0, 5, 3600),
            outstanding_max_age_seconds=3600
            * number("SMARTBOX_EXPORT_OUTSTANDING_MAX_AGE_HOURS", 48, 0, 24 * 365),
            quarantine_grace_seconds=DAY
            * number("SMARTBOX_RETENTION_QUARANTINE_GRACE_DAYS", 7, 0, 3650),
            staging_grace_seconds=DAY * number("SMARTBOX_RETENTION_STAGING_GRACE_DAYS", 7, 0, 3650),
            quarantine_alert_seconds=DAY
            * number("SMARTBOX_RETENTION_QUARANTINE_ALERT_DAYS", 30, 0.01, 3650),
        )

    def deadline(self, started: datetime) -> datetime | None:
        """No new batch starts after this: the first window end after ``started``."""
        if self.window_end is None:
            return None
        tz = ZoneInfo(self.timezone)
        local = started.astimezone(tz)
        end = datetime.combine(local.date(), self.window_end, tzinfo=tz)
        if end <= local:
            end += timedelta(days=1)
        return end


def classify(trust: TrustConfig | None, source: Mapping[str, Any] | None) -> str:
    """``prospective`` (daily work: exported first) or ``backfill`` (a cohort or archive load).

    Backfill when the study was retrieved (``origin``: a cohort's C-MOVE, told by the Move
    Originator AE Title of its C-STOREs), when the trust file says so for the whole trust
    (``backfill``), when every calling
    AE the study came from is one of its ``backfill_callers``, or when all its instances were
    acquired more than ``prospective_max_age_days`` before they arrived; ``source`` is what the
    receiver recorded (``study.staged`` body ``source``). Unknown is prospective: a study is
    never held back for lack of a hint.
    """
    if trust is None:
        return "prospective"
    if trust.backfill:
        return "backfill"
    source = source or {}
    if source.get("origin") == "retrieved":
        return "backfill"
    callers = source.get("calling_aes") or []
    if callers and trust.backfill_callers and set(callers) <= set(trust.backfill_callers):
        return "backfill"
    age = source.get("acquired_days_before_arrival")
    if isinstance(age, int) and age > trust.prospective_max_age_days:
        return "backfill"
    return "prospective"
