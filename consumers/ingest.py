"""National ingest, the reference consumer of the export queue.

For each ``export.batch``: fetch the batch manifest and check it against ``manifest_sha256``;
fetch every object, verify its sha256, store it in the archive bucket; then publish
``export.receipt`` (``complete`` only if every object verified). A checksum failure is a
business outcome, reported in the receipt and counted, not a crash.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import schemas
from smartbox import metrics
from smartbox.bus import Bus
from smartbox.errors import NotFound, PermanentError
from smartbox.store import ObjectStore

log = logging.getLogger(__name__)


class NationalIngest:
    """Handles ``export.batch`` messages on the national side."""

    def __init__(self, store: ObjectStore, bus: Bus, *, archive_bucket: str = "national-archive"):
        self.store = store
        self.bus = bus
        self.archive = archive_bucket
        self.producer = schemas.producer_name("ingest")
        self._ready = False

    def handle(self, message: dict[str, Any]) -> None:
        started = time.monotonic()
        code = message["trust"]
        body = message["body"]
        if not self._ready:
            self.store.ensure_bucket(self.archive)
            self._ready = True
        raw = self.store.get_bytes(body["bucket"], body["manifest_key"])
        if hashlib.sha256(raw).hexdigest() != body["manifest_sha256"]:
            raise PermanentError("batch manifest does not match manifest_sha256")
        try:
            import json

            manifest = json.loads(raw)
        except ValueError as exc:
            raise PermanentError("batch manifest is not JSON") from exc
        verified = failures = missing = 0
        for obj in manifest["objects"]:
            try:
                data = self.store.get_bytes(body["bucket"], obj["key"])
            except NotFound:
                missing += 1
                continue
            if hashlib.sha256(data).hexdigest() != obj["sha256"]:
                failures += 1
                metrics.INGEST_CHECKSUM_FAILURES.labels(code).inc()
                continue
            self.store.put_bytes(self.archive, obj["key"], data)
            verified += 1
        expected = len(manifest["objects"])
        status = "complete" if verified == expected == body["instance_count"] else "failed"
        receipt = schemas.make_message(
            "export.receipt",
            trust=code,
            producer=self.producer,
            parents=[message],
            body={
                "batch_id": body["batch_id"],
                "status": status,
                "instances_expected": body["instance_count"],
                "instances_verified": verified,
                "checksum_failures": failures,
                "missing": missing,
                "stored_bucket": self.archive,
            },
        )
        self.bus.publish(receipt)
        metrics.INSTANCES_INGESTED.labels(code).inc(verified)
        metrics.STAGE_SECONDS.labels(code, "ingest").observe(time.monotonic() - started)
        log.info(
            "%s: batch %s ingested %d/%d (%s)", code, body["batch_id"], verified, expected, status
        )
