"""The clinical stage: ``clinical.arrived`` -> staging bucket + a record for export.

Each record is written as canonical JSON under a content-addressed key
(``layout.clinical_record_key``), then its export state and queue marker (``export``), then
the message is acked: a redelivery, or the same file submitted again, finds the state of that
version already there and changes nothing (counted as a duplicate, never a second record).
A changed row (same trust, patient and record key, other values) is a new version of the same
record id; the national side keeps the latest.

A record of a withdrawn patient (``smartbox withdraw``) is not staged: it is counted as held
back with the reason ``withdrawn``. ``clinical.submitted`` (what a submission held back, by
reason) is counted in ``smartbox_clinical_records_held_back_total`` and kept as the
submission's report beside the records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import schemas
from consumers.withdraw import WithdrawalRegistry
from smartbox import layout, metrics
from smartbox.errors import PermanentError, SchemaError
from smartbox.store import ObjectStore, put_json

from . import export

log = logging.getLogger(__name__)


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record is staged and exported as (sorted keys, no spaces)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


class ClinicalStage:
    """Handles ``clinical.arrived`` and ``clinical.submitted``."""

    def __init__(self, store: ObjectStore, staging_bucket: str = "staging") -> None:
        self.store = store
        self.staging = staging_bucket
        self.withdrawn = WithdrawalRegistry(store, staging_bucket)
        self._ready = False
        self._trusts: set[str] = set()

    def handle(self, message: dict[str, Any]) -> None:
        if not self._ready:
            self.store.ensure_bucket(self.staging)
            self._ready = True
        if message["schema"] == "clinical.submitted":
            self._submitted(message)
            return
        self._arrived(message)

    def _arrived(self, message: dict[str, Any]) -> None:
        code, body = message["trust"], message["body"]
        record = body["record"]
        try:  # the message schema holds it already: checked again as a storage document
            schemas.validate_document("clinical.record", record)
        except SchemaError as exc:
            raise PermanentError(f"clinical record invalid: {exc}") from None
        if record["trust"] != code:
            raise PermanentError("clinical record of another trust than its message")
        self.withdrawn.refresh()
        if self.withdrawn.is_withdrawn(record["patient"]):
            metrics.CLINICAL_HELD_BACK.labels(code, "withdrawn").inc()
            log.info("%s: clinical record %s held back: withdrawn", code, record["record_id"])
            return
        data = canonical(record)
        sha256 = hashlib.sha256(data).hexdigest()
        key = layout.clinical_record_key(code, record["record_id"], sha256)
        export_id = export.export_id(key)
        if export.get(self.store, self.staging, code, export_id) is not None:
            export.ensure_queued(self.store, self.staging, code, export_id)
            metrics.CLINICAL_DUPLICATES.labels(code).inc()
            log.info("%s: clinical record %s: this version already staged", code, export_id)
            return
        self.store.put_bytes(self.staging, key, data)
        export.record(
            self.store,
            self.staging,
            {
                "export_id": export_id,
                "trust": code,
                "record_id": record["record_id"],
                "patient": record["patient"],
                "key": key,
                "sha256": sha256,
                "size": len(data),
                "recorded_at": time.time(),
                "message_id": message["message_id"],
                "correlation_id": message["correlation_id"],
            },
        )
        if code not in self._trusts:  # the trust is on the exporter's round (layout.trust_key)
            self.store.put_bytes(self.staging, layout.trust_key(code), b"")
            self._trusts.add(code)
        metrics.CLINICAL_ACCEPTED.labels(code).inc()
        log.info("%s: clinical record %s staged (row %d)", code, export_id, body["row"])

    def _submitted(self, message: dict[str, Any]) -> None:
        code, body = message["trust"], message["body"]
        key = layout.clinical_submission_key(code, body["submission_id"])
        first = not self.store.exists(self.staging, key)
        put_json(
            self.store,
            self.staging,
            key,
            {**body, "trust": code, "message_id": message["message_id"], "at": time.time()},
        )
        if first:  # a redelivered report is not counted twice
            for reason, n in body["held_back_reasons"].items():
                metrics.CLINICAL_HELD_BACK.labels(code, reason).inc(n)
        log.info(
            "%s: clinical submission %s: %d rows, %d accepted, %d held back",
            code,
            body["submission_id"],
            body["rows"],
            body["accepted"],
            body["held_back"],
        )
