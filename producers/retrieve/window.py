"""The off-peak window: when a trust's archive may be asked anything at all.

A window opens at each time of a cron expression in the archive's time zone and stays open for
``window_hours`` (``0 19 * * *`` and 11 hours: 19:00 to 06:00 local time, every day; across a
clock change the local wall-clock times hold). Outside it the cohort process sends nothing to
the archive, neither C-FIND nor C-MOVE; a move under way when the window closes is allowed to
finish (a study is one move), nothing new is started.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter


class Window:
    """A recurring window: opens on ``cron`` (in ``timezone``), lasts ``hours``."""

    def __init__(self, cron: str, hours: float, timezone: str) -> None:
        if not croniter.is_valid(cron):
            raise ValueError(f"not a cron expression: {cron!r}")
        self.cron = cron
        self.length = timedelta(hours=hours)
        self.tz = ZoneInfo(timezone)

    def _last_opening(self, now: datetime) -> datetime:
        local = now.astimezone(self.tz)
        # a fire exactly at ``now`` counts as open: croniter's get_prev is strictly before
        prev: datetime = croniter(self.cron, local + timedelta(seconds=1)).get_prev(datetime)
        return prev

    def is_open(self, now: datetime) -> bool:
        """Whether ``now`` (timezone-aware) falls inside a window."""
        return now.astimezone(self.tz) < self._last_opening(now) + self.length

    def closes_at(self, now: datetime) -> datetime | None:
        """When the window open at ``now`` closes (None if it is closed)."""
        end = self._last_opening(now) + self.length
        return end if now.astimezone(self.tz) < end else None

    def next_open(self, now: datetime) -> datetime:
        """``now`` if the window is open, else when it next opens."""
        if self.is_open(now):
            return now
        nxt: datetime = croniter(self.cron, now.astimezone(self.tz)).get_next(datetime)
        return nxt
