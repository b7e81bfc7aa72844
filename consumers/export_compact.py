"""Done records and receipts compacted per trust and day: their count follows days, not studies.

A study version's record is **done** when it is acknowledged nationally, held (nothing to
export) or withdrawn, *and* retention has purged its quarantine originals (and, when
acknowledged, its staged copies): from then on nothing looks it up by id (the purges have
finished with it; a redelivered ``study.staged`` cannot arrive, its originals being gone).
Compaction moves the done records of a day into ``archive/<trust>/records-<day>.json``, writes
that day into the study's patient markers (a withdrawal still finds it), then deletes the
record and its day marker. Receipts older than the same cutoff go into
``archive/<trust>/receipts-<day>.json`` (the day they were received). ``smartbox reconcile``,
``smartbox report`` and ``smartbox withdraw`` read the archive beside the remaining records,
so they give the same answers. A record not done (queued, in flight, failed) stays its own
object, whatever its age.

Every step is repeatable: the archive is written (merged) first, the originals deleted after,
so a crash leaves a record in both places at worst, and its own object wins until the next
run deletes it. Runs at the end of an export pass, under its lease (one writer); each deleted
object is counted (``smartbox_retention_deleted_objects_total{bucket="staging",
why="compacted"}``) and logged by trust and day only.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from smartbox import layout, metrics
from smartbox.errors import NotFound
from smartbox.store import get_json, put_json

from .export_state import DONE, ExportState

log = logging.getLogger("consumers.exporter")
DAY = 86400.0


@dataclass
class CompactReport:
    records: int = 0
    receipts: int = 0
    days: int = 0


def is_done(record: dict[str, Any]) -> bool:
    """Finished with for good: settled nationally (or never to be exported) and purged."""
    if record["state"] not in DONE or "quarantine_purged_at" not in record:
        return False
    return record["state"] != "acked" or "staging_purged_at" in record


def compact(
    state: ExportState, trust: str, *, now: float | None = None, max_reads: int = 2000
) -> CompactReport:
    """Compact ``trust``'s done records and receipts of days before yesterday (UTC) into one
    archive object per day; reads at most ``max_reads`` records (the rest waits a pass)."""
    now = time.time() if now is None else now
    before = layout.day_of(now - DAY)
    report = CompactReport()
    days: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key, day, export_id in state.day_markers(trust):
        if day >= before or sum(len(v) for v in days.values()) >= max_reads:
            break  # oldest day first: everything after is younger
        days[day].append((key, export_id))
    for day, markers in days.items():
        done = {}
        for key, export_id in markers:
            record = state.get(trust, export_id)
            if record is not None and is_done(record):
                done[export_id] = (key, record)
        if done:
            _archive_day(state, trust, day, done)
            report.records += len(done)
            report.days += 1
    report.receipts = _compact_receipts(state, trust, before)
    return report


def _archive_day(
    state: ExportState, trust: str, day: str, done: dict[str, tuple[str, dict[str, Any]]]
) -> None:
    store, bucket = state.store, state.bucket
    records = state.archived(trust, day)
    records.update({export_id: record for export_id, (_key, record) in done.items()})
    put_json(
        store,
        bucket,
        layout.archived_records_key(trust, day),
        {"trust": trust, "day": day, "records": records},
    )
    for export_id, (marker, record) in done.items():
        for patient in record.get("patients", []):
            store.put_bytes(bucket, layout.patient_key(patient, trust, export_id), day.encode())
        store.delete(bucket, layout.record_key(trust, export_id))
        store.delete(bucket, marker)
    metrics.RETENTION_DELETED.labels("staging", "compacted").inc(2 * len(done))
    log.info("%s: %d done study records of %s compacted into its archive", trust, len(done), day)


def _compact_receipts(state: ExportState, trust: str, before: str) -> int:
    store, bucket = state.store, state.bucket
    by_day: dict[str, dict[str, tuple[str, dict[str, Any]]]] = defaultdict(dict)
    for key, _size, modified in list(store.list_entries(bucket, layout.receipts_prefix(trust))):
        if layout.day_of(modified) >= before:
            continue  # young (written when it was received): not read at all
        try:
            receipt = get_json(store, bucket, key)
        except NotFound:
            continue
        day = layout.day_of(float(receipt.get("received_at", modified)))
        by_day[day][str(receipt.get("batch_id", key))] = (key, receipt)
    for day, receipts in by_day.items():
        key = layout.archived_receipts_key(trust, day)
        try:
            kept: dict[str, Any] = get_json(store, bucket, key)["receipts"]
        except NotFound:
            kept = {}
        kept.update({batch_id: receipt for batch_id, (_k, receipt) in receipts.items()})
        put_json(store, bucket, key, {"trust": trust, "day": day, "receipts": kept})
        for original, _receipt in receipts.values():
            store.delete(bucket, original)
        metrics.RETENTION_DELETED.labels("staging", "compacted").inc(len(receipts))
        log.info("%s: %d receipts of %s compacted into its archive", trust, len(receipts), day)
    return sum(len(r) for r in by_day.values())
