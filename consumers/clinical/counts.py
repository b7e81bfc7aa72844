"""Per trust, what became of its clinical records: counted from what is durable in staging.

One owner for the numbers ``smartbox status``, ``smartbox reconcile`` and the transparency
report print (STYLE 17). Two sources, both written before their message is acked:

* the submission reports (``layout.clinical_submission_key``, one per ``clinical submit``):
  rows read, rows accepted (published) and held back, by reason;
* the export state of every staged record version (``export``: ``pending`` -> ``sent`` ->
  ``acked``, or ``failed``, or ``withdrawn``), its queue marker, and, with ``check=True``, the
  staged record objects themselves.

A version is **exported** once it was sent in a signed batch (``attempts`` > 0, whatever
became of it since), **pending** while it waits for its first batch. So, per trust::

    staged = exported + pending + withdrawn before export

and ``check=True`` (``smartbox reconcile``) makes that a check: a staged record object with no
export state (the stage wrote it and stopped) is staged but neither exported nor pending, a
visible discrepancy; so are versions waiting with no queue marker (the exporter would never
pick them up) or whose staged object is gone (the copy would fail). Counts and reasons only:
no pseudonym, record id or key.

Cost: LIST and one GET per submission report and per export state of the trust (no day index
for clinical records yet); ``check`` adds a LIST of the trust's staged records.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from smartbox import layout
from smartbox.errors import NotFound, PermanentError
from smartbox.store import ObjectStore, entries_if_bucket, get_json


@dataclass
class ClinicalCounts:
    trust: str
    submissions: int = 0  # clinical submit runs (their reports)
    rows: int = 0  # rows read by those runs
    accepted: int = 0  # rows published (valid)
    held_back: int = 0  # rows held back at submission
    held_back_reasons: dict[str, int] = field(default_factory=dict)
    staged: int = 0  # record versions staged (a resubmitted, unchanged row is not a new one)
    pending: int = 0  # staged, waiting for their first batch
    exported: int = 0  # sent in a signed batch at least once
    in_flight: int = 0  # of those: sent, no receipt yet (or rejected, to be sent again)
    acknowledged: int = 0  # accepted by the national side (withdrawn later included)
    failed: int = 0  # set aside after max_attempts sends
    withdrawn: int = 0  # withdrawn (before or after export)
    withdrawn_before_export: int = 0  # removed from staging before any batch
    overdue: int = 0  # pending or in flight for longer than max_age_seconds
    not_recorded: int = 0  # check: staged record objects with no export state
    not_queued: int = 0  # check: waiting (pending or in flight) with no queue marker
    missing_objects: int = 0  # check: waiting, but the staged record object is gone
    skipped: int = 0  # unreadable reports or states

    @property
    def discrepancy(self) -> int:
        """staged - (exported + pending + withdrawn before export): 0 when they add up."""
        return self.staged - self.exported - self.pending - self.withdrawn_before_export

    @property
    def problems(self) -> list[str]:
        """One line per kind of discrepancy (counts only)."""
        out = []
        if self.discrepancy:
            out.append(
                f"{self.trust}: clinical: {self.staged} staged != {self.exported} exported + "
                f"{self.pending} pending + {self.withdrawn_before_export} withdrawn before export"
            )
        if self.not_recorded:
            out.append(
                f"{self.trust}: clinical: {self.not_recorded} staged record(s) with no export "
                "state: never exported (resubmit the file: the stage records them again)"
            )
        if self.not_queued:
            out.append(
                f"{self.trust}: clinical: {self.not_queued} record(s) waiting with no queue "
                "marker: the exporter will not send them"
            )
        if self.missing_objects:
            out.append(
                f"{self.trust}: clinical: {self.missing_objects} record(s) waiting whose staged "
                "object is gone: their copy to the national bucket fails"
            )
        return out


def _in(ts: object, since: float | None, until: float | None) -> bool:
    if not isinstance(ts, int | float):
        return since is None and until is None
    return (since is None or ts >= since) and (until is None or ts < until)


def _read(store: ObjectStore, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        value = get_json(store, bucket, key)
    except (NotFound, PermanentError):
        return None
    return value if isinstance(value, dict) else None


def _keys(store: ObjectStore, bucket: str, prefix: str) -> list[str]:
    return [key for key, _size, _mtime in entries_if_bucket(store, bucket, prefix)]


def count(
    store: ObjectStore,
    bucket: str,
    trust: str,
    *,
    since: float | None = None,
    until: float | None = None,
    max_age_seconds: float | None = None,
    check: bool = False,
    now: float | None = None,
) -> ClinicalCounts:
    """The trust's clinical counts: submissions made, and record versions staged, in
    ``[since, until)`` (unix times; None: unbounded). ``check``: look for discrepancies too."""
    now = time.time() if now is None else now
    out = ClinicalCounts(trust)
    reasons: Counter[str] = Counter()
    submissions = layout.clinical_submission_key(trust, "").removesuffix(".json")
    for key in _keys(store, bucket, submissions):
        report = _read(store, bucket, key)
        if report is None or not isinstance(report.get("rows"), int):
            out.skipped += 1
            continue
        if not _in(report.get("at"), since, until):
            continue
        out.submissions += 1
        out.rows += report["rows"]
        out.accepted += int(report.get("accepted", 0))
        out.held_back += int(report.get("held_back", 0))
        reasons.update({str(r): int(n) for r, n in report.get("held_back_reasons", {}).items()})
    out.held_back_reasons = dict(sorted(reasons.items()))

    queued = {
        k.rsplit("/", 1)[-1] for k in _keys(store, bucket, layout.clinical_queue_prefix(trust))
    }
    recorded: set[str] = set()
    state_prefix = layout.clinical_state_key(trust, "").removesuffix(".json")
    for key in _keys(store, bucket, state_prefix):
        state = _read(store, bucket, key)
        if state is None or state.get("state") not in (
            "pending",
            "sent",
            "acked",
            "failed",
            "withdrawn",
        ):
            out.skipped += 1
            continue
        recorded.add(str(state.get("key")))
        if not _in(state.get("recorded_at"), since, until):
            continue
        st, attempts = state["state"], int(state.get("attempts", 0))
        out.staged += 1
        if attempts > 0:
            out.exported += 1
        elif st == "pending":
            out.pending += 1
        out.in_flight += attempts > 0 and st in ("sent", "pending")
        out.acknowledged += st == "acked" or "acked_at" in state
        out.failed += st == "failed"
        out.withdrawn += st == "withdrawn"
        out.withdrawn_before_export += st == "withdrawn" and attempts == 0
        waiting = st in ("pending", "sent")
        if waiting and max_age_seconds is not None:
            out.overdue += now - float(state.get("recorded_at", now)) > max_age_seconds
        if check and waiting:
            out.not_queued += state["export_id"] not in queued
            out.missing_objects += not store.exists(bucket, str(state["key"]))
    if check:
        for key in _keys(store, bucket, f"{trust}/_clinical/"):
            if layout.is_clinical_record_key(key) and key not in recorded:
                out.not_recorded += 1
                out.staged += 1
    return out
