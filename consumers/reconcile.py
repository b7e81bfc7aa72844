"""Reconciliation from the box's own records: per trust and day, expected vs delivered.

For each day a trust's studies were staged (the day ledger ``_export/days/<trust>/<day>/``, and
that day's archive of compacted done records), every study version is counted by what became
of it: delivered (accepted nationally),
withdrawn, held (nothing to export: every instance held back), or outstanding (queued, in
flight, or failed after its retries). Outstanding past ``max_age`` is what an auditor asks
about: ``smartbox reconcile`` exits non-zero for it. The cost is one listing and one archive
read per day and one small read per study of that day not yet compacted; nothing else.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta

from .export_state import ExportState


@dataclass
class DayLine:
    trust: str
    day: str
    counts: Counter[str] = field(default_factory=Counter)
    overdue: int = 0

    @property
    def expected(self) -> int:
        return sum(self.counts.values()) - self.counts["held"] - self.counts["withdrawn"]

    @property
    def delivered(self) -> int:
        return self.counts["acked"]

    @property
    def outstanding(self) -> int:
        return self.expected - self.delivered


def reconcile(
    state: ExportState, trust: str, first: date, last: date, *, max_age_seconds: float
) -> list[DayLine]:
    """One line per day from ``first`` to ``last`` (inclusive) that has staged studies."""
    now = time.time()
    lines = []
    day = first
    while day <= last:
        line = DayLine(trust, day.isoformat())
        for record in state.day_records(trust, line.day).values():  # compacted ones too
            status = record["state"] if record else "missing"
            if status in ("pending", "sent"):
                status = "queued" if status == "pending" else "in_flight"
            line.counts[status] += 1
            outstanding = status not in ("acked", "held", "withdrawn")
            if outstanding and record and now - float(record["recorded_at"]) > max_age_seconds:
                line.overdue += 1
        if line.counts:
            lines.append(line)
        day += timedelta(days=1)
    return lines


def render(lines: list[DayLine]) -> str:
    head = (
        "trust",
        "day",
        "expected",
        "delivered",
        "outstanding",
        "queued",
        "in_flight",
        "failed",
        "withdrawn",
        "held",
        "overdue",
    )  # noqa: E501
    rows = [
        (
            ln.trust,
            ln.day,
            ln.expected,
            ln.delivered,
            ln.outstanding,
            ln.counts["queued"],
            ln.counts["in_flight"],
            ln.counts["failed"] + ln.counts["missing"],
            ln.counts["withdrawn"],
            ln.counts["held"],
            ln.overdue,
        )  # fmt: skip
        for ln in lines
    ]
    total = (
        "total", "", *(sum(int(r[i]) for r in rows) for i in range(2, len(head)))
    )  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, total, strict=True)]
    out = ["  ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True))]
    out += [
        "  ".join(f"{v!s:>{w}}" for v, w in zip(r, widths, strict=True)) for r in [*rows, total]
    ]
    return "\n".join(out)
