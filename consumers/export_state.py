"""The exporter's state in object storage: one record of truth per staged study version, and
markers that index it (queue per trust, class and day; in flight; day ledger; acknowledged).

A record's ``state`` is one of ``STATES``; markers are written before the record changes, so a
crash leaves at worst a stale marker, which the next reader drops after checking the record.
No operation lists more than what it is about to work on: a trust's queue is read lazily in
day order and only as far as one batch needs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from smartbox import layout
from smartbox.errors import NotFound
from smartbox.store import ObjectStore, get_json, put_json

#: a study version in one of these states that was also purged from quarantine (and, when
#: acknowledged, from staging) is done: nothing reads its record by id again, so it is compacted
DONE = ("acked", "held", "withdrawn")
#: pending: waiting in the queue; sent: in a published batch, no receipt yet; acked: accepted
#: nationally; failed: rejected max_attempts times (dead-lettered); held: nothing to export
#: (every instance held back); withdrawn: removed before export, or withdrawn nationally
STATES = ("pending", "sent", "acked", "failed", "held", "withdrawn")


class ExportState:
    """Reads and writes the exporter's records and markers in ``bucket``."""

    def __init__(self, store: ObjectStore, bucket: str) -> None:
        self.store = store
        self.bucket = bucket

    # --- records ----------------------------------------------------------------------------
    def get(self, trust: str, export_id: str) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = get_json(
                self.store, self.bucket, layout.record_key(trust, export_id)
            )
        except NotFound:
            return None
        return record

    def put(self, record: dict[str, Any]) -> None:
        if record["state"] not in STATES:
            raise ValueError(f"unknown export state {record['state']!r}")
        put_json(
            self.store, self.bucket, layout.record_key(record["trust"], record["export_id"]), record
        )

    def _mark(self, key: str) -> None:
        self.store.put_bytes(self.bucket, key, b"")

    # --- markers ----------------------------------------------------------------------------
    def enqueue(self, record: dict[str, Any]) -> None:
        self._mark(
            layout.queue_key(record["trust"], record["class"], record["day"], record["export_id"])
        )

    def dequeue(self, record: dict[str, Any]) -> None:
        self.store.delete(
            self.bucket,
            layout.queue_key(record["trust"], record["class"], record["day"], record["export_id"]),
        )

    def mark_sent(self, record: dict[str, Any]) -> None:
        self._mark(layout.sent_key(record["trust"], record["export_id"]))

    def unmark_sent(self, record: dict[str, Any]) -> None:
        self.store.delete(self.bucket, layout.sent_key(record["trust"], record["export_id"]))

    def mark_day(self, record: dict[str, Any]) -> None:
        self._mark(layout.day_key(record["trust"], record["day"], record["export_id"]))

    def has_day(self, trust: str, day: str, export_id: str) -> bool:
        return self.store.exists(self.bucket, layout.day_key(trust, day, export_id))

    def mark_acked(self, record: dict[str, Any]) -> None:
        self._mark(
            layout.acked_key(
                record["trust"], layout.day_of(record["acked_at"]), record["export_id"]
            )
        )

    def mark_trust(self, trust: str) -> None:
        self._mark(layout.trust_key(trust))

    def trusts(self) -> list[str]:
        """Trusts that ever had a study staged (one small marker each)."""
        return sorted(k.rsplit("/", 1)[-1] for k in self._keys(layout.trusts_prefix()))

    def _keys(self, prefix: str) -> Iterator[str]:
        lazy = getattr(self.store, "iter_keys", None)
        return (
            iter(lazy(self.bucket, prefix)) if lazy else self.store.list_keys(self.bucket, prefix)
        )

    def queued(self, trust: str, klass: str) -> Iterator[tuple[str, str]]:
        """(day, export id) of queued studies, oldest day first, read lazily."""
        for key in self._keys(layout.queue_prefix(trust, klass)):
            try:
                yield layout.marker_day(key), layout.marker_id(key)
            except ValueError:
                continue

    def in_flight(self, trust: str) -> Iterator[str]:
        for key in self._keys(layout.sent_prefix(trust)):
            try:
                yield layout.marker_id(key)
            except ValueError:
                continue

    def day_ids(self, trust: str, day: str) -> list[str]:
        ids = []
        for key in self._keys(layout.day_prefix(trust, day)):
            try:
                ids.append(layout.marker_id(key))
            except ValueError:
                continue
        return ids

    def day_markers(self, trust: str) -> Iterator[tuple[str, str, str]]:
        """(marker key, day, export id) of the day ledger, oldest day first, read lazily (only
        what is not compacted yet: the archive holds the rest)."""
        for key in self._keys(layout.days_prefix(trust)):
            try:
                yield key, layout.marker_day(key), layout.marker_id(key)
            except ValueError:
                continue

    # --- the archive: done records compacted per trust and day ------------------------------
    def archived(self, trust: str, day: str) -> dict[str, dict[str, Any]]:
        """The records of ``day`` compacted into its archive object (export id -> record)."""
        try:
            doc = get_json(self.store, self.bucket, layout.archived_records_key(trust, day))
        except NotFound:
            return {}
        records: dict[str, dict[str, Any]] = doc.get("records", {})
        return records

    def day_records(self, trust: str, day: str) -> dict[str, dict[str, Any] | None]:
        """Every study version staged on ``day``: its own record where it still has one (that
        one wins: a crash mid-compaction leaves both), else its archived record; None for a
        day marker without any record."""
        out: dict[str, dict[str, Any] | None] = dict(self.archived(trust, day))
        for export_id in self.day_ids(trust, day):
            record = self.get(trust, export_id)
            if record is not None or export_id not in out:
                out[export_id] = record
        return out

    def acked_markers(self, trust: str) -> Iterator[tuple[str, str, str]]:
        """(marker key, ack day, export id) of acknowledged studies not yet purged from staging."""
        for key in self._keys(layout.acked_prefix(trust)):
            try:
                yield key, layout.marker_day(key), layout.marker_id(key)
            except ValueError:
                continue

    def drop_queued_key(self, trust: str, klass: str, day: str, export_id: str) -> None:
        self.store.delete(self.bucket, layout.queue_key(trust, klass, day, export_id))

    # --- withdrawals of exported data, waiting for the trust's next batch -------------------
    def withdrawals(self, trust: str) -> list[dict[str, Any]]:
        out = []
        for key in self._keys(layout.withdrawal_outbox_prefix(trust)):
            try:
                out.append(get_json(self.store, self.bucket, key))
            except NotFound:
                continue
        return out

    def save_withdrawal(self, entry: dict[str, Any]) -> None:
        key = layout.withdrawal_outbox_key(entry["trust"], entry["export_id"])
        put_json(self.store, self.bucket, key, entry)

    def drop_withdrawal(self, trust: str, export_id: str) -> None:
        self.store.delete(self.bucket, layout.withdrawal_outbox_key(trust, export_id))

    # --- claims -----------------------------------------------------------------------------
    def open_claims(self) -> list[tuple[str, dict[str, Any]]]:
        """Export batches a pass started and did not finish (resumed first by the next pass)."""
        out = []
        for key in self._keys(layout.claims_prefix()):
            try:
                out.append((key, get_json(self.store, self.bucket, key)))
            except NotFound:
                continue
        return out

    def create_claim(self, key: str, claim: dict[str, Any]) -> bool:
        data = json.dumps(claim, sort_keys=True, separators=(",", ":")).encode()
        created: bool = self.store.put_new(self.bucket, key, data)  # type: ignore[attr-defined]
        return created

    def save_claim(self, key: str, claim: dict[str, Any]) -> None:
        put_json(self.store, self.bucket, key, claim)

    def drop_claim(self, key: str) -> None:
        self.store.delete(self.bucket, key)


def new_record(
    trust: str, body: dict[str, Any], message: dict[str, Any], klass: str
) -> dict[str, Any]:
    """The record of a freshly staged study version (from its ``study.staged``)."""
    now = time.time()
    return {
        "export_id": body["batch_id"],
        "trust": trust,
        "study_uid": body["study_uid"],
        "study_key": body["study_key"],
        "bucket": body["bucket"],
        "manifest_key": body["manifest_key"],
        "instances": body["instances_staged"],
        "held_back": body["instances_held_back"],  # counted by smartbox status
        "bytes": body["bytes_staged"],
        "amendment": body["amendment"],
        "class": klass,
        "day": layout.day_of(now),
        "recorded_at": now,
        "state": "pending" if body["instances_staged"] else "held",
        "attempts": 0,
        "batch_id": None,
        "batches": [],
        "reasons": [],
        "patients": [],
        "message_id": message["message_id"],
        "correlation_id": message["correlation_id"],
    }
