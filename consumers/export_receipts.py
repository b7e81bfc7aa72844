"""Receipts acted on, per study (the exporter's half of ``export.receipt``).

Only a record in state ``sent`` *for that batch* moves, so a duplicate or late receipt changes
nothing: accepted -> ``acked`` (counted once); rejected, or no receipt within the timeout ->
queued again for the next window, until ``max_attempts`` sends; then ``failed``: an
``export.failed`` dead letter with the reason in the exporter's dead-letter queue (``smartbox
dlq list exporter``), a dead marker, a metric and ``failed`` in ``smartbox reconcile`` -- never
an endless loop. Replaying that letter (``smartbox dlq replay exporter``) queues the study for
one more round of at most ``max_attempts`` sends; the same letter replayed twice grants one.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

import schemas
from smartbox import layout, logs, metrics
from smartbox.bus import Bus
from smartbox.errors import PermanentError
from smartbox.store import ObjectStore, put_json

from . import rotation
from .clinical import export as clinical_export
from .export_policy import ExportPolicy
from .export_state import ExportState

log = logging.getLogger("consumers.exporter")
_LETTER_NS = uuid.UUID("0d6b9c1e-3f0c-4b8e-8f7e-2a41c5d9e6b3")


@cache
def _reason_codes() -> frozenset[str]:
    return frozenset(
        schemas.load("export.receipt", schemas.SCHEMAS["export.receipt"])["$defs"]["reason"]["enum"]
    )


def _code(reason: str) -> str:
    """A reason as a code of the closed vocabulary (``unknown`` for anything else)."""
    return reason if reason in _reason_codes() else "unknown"


def failed_letter(record: dict[str, Any], reason: str, producer: str) -> dict[str, Any]:
    """The ``export.failed`` dead letter of a study version set aside after its round of
    attempts: opaque ids, the pseudonymous study UID, counts and reason codes only. Its id is
    derived from the study version and the round, so a re-publication is the same letter."""
    round_ = int(record.get("round", 1))
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return schemas.make_message(
        "export.failed",
        trust=record["trust"],
        producer=producer,
        parents=[{"message_id": record["message_id"], "correlation_id": record["correlation_id"]}],
        message_id=str(uuid.uuid5(_LETTER_NS, f"{record['export_id']}:{round_}")),
        body={
            "export_id": record["export_id"],
            "study_uid": record["study_uid"],
            "attempts": record["attempts"],
            "round": round_,
            "reason": _code(reason),
            "reasons": [_code(r) for r in record["reasons"]][-10:],
            "failed_at": now,
        },
    )


class ReceiptHandling:
    """Mixed into ``Exporter``: the state it works on is the exporter's."""

    store: ObjectStore
    bus: Bus
    staging: str
    state: ExportState
    policy: ExportPolicy
    _pending: dict[str, list[float]]

    # --- receipts ---------------------------------------------------------------------------
    def handle_receipt(self, message: dict[str, Any]) -> None:
        """Act on the national side's answer, study by study (idempotent on redelivery)."""
        body, code = message["body"], message["trust"]
        metrics.EXPORT_RECEIPTS.labels(code, body["status"]).inc()
        if message["version"] < 2:
            log.warning(
                "%s: receipt v%d has no per-study results: ignored", code, message["version"]
            )
            return
        now = time.time()
        put_json(
            self.store,
            self.staging,
            layout.receipt_key(code, body["batch_id"]),
            {**body, "trust": code, "message_id": message["message_id"], "received_at": now},
        )
        for study in body["studies"]:
            record = self.state.get(code, study["export_id"])
            if (
                record is None
                or record["state"] != "sent"
                or record["batch_id"] != body["batch_id"]
            ):
                continue  # a duplicate receipt, or one for an older send: already acted on
            if study["status"] == "accepted":
                record.update(state="acked", acked_at=time.time())
                self.state.mark_acked(record)
                self.state.unmark_sent(record)
                self.state.put(record)
                metrics.STUDIES_ACKNOWLEDGED.labels(code).inc()
                # the study's own correlation id: its trail ends here, at the receipt
                with logs.context(correlation_id=record.get("correlation_id")):
                    log.info(
                        "%s: study version %s acknowledged nationally (batch %s)",
                        code,
                        record["export_id"],
                        body["batch_id"],
                    )
            else:
                reason = study.get("reason", "unknown")
                metrics.STUDIES_REJECTED.labels(code, reason).inc()
                log.error(
                    "%s: study version %s rejected nationally: %s",
                    code,
                    record["export_id"],
                    reason,
                )
                self._requeue(record, reason)
        for w in body["withdrawals"]:
            if w["status"] == "applied":
                self.state.drop_withdrawal(code, w["export_id"])
                metrics.WITHDRAWALS.labels(code, "acknowledged").inc()
        for r in body.get("rotations", []):  # key rotation maps: applied nationally
            if r["status"] == "applied":
                rotation.applied(self.store, self.staging, code, r["rotation_id"])
        if body.get("clinical"):  # clinical records: acked, or sent again in a later batch
            clinical_export.on_receipt(
                self.store,
                self.staging,
                code,
                body["batch_id"],
                body["clinical"],
                max_attempts=self.policy.max_attempts,
            )
        if body.get("clinical_withdrawals"):
            clinical_export.withdrawals_applied(
                self.store, self.staging, code, body["clinical_withdrawals"]
            )

    def _requeue(self, record: dict[str, Any], reason: str) -> None:
        """Back to the queue for the next window, or set aside after ``max_attempts``."""
        record["reasons"] = [*record["reasons"], reason][-10:]
        if record["attempts"] >= int(record.get("attempt_limit", self.policy.max_attempts)):
            # the dead letter first: if the broker is away, the record stays as it was and the
            # receipt (or the pass) is retried; a second publication is the same letter
            letter = failed_letter(record, reason, schemas.producer_name("exporter"))
            self.bus.dead_letter_message(
                "exporter",
                letter,
                f"export failed: {_code(reason)} after {record['attempts']} attempts "
                f"(round {letter['body']['round']}); `smartbox dlq replay exporter --id "
                f"{letter['message_id']}` queues it for one more round",
            )
            record["state"] = "failed"
            put_json(
                self.store,
                self.staging,
                layout.dead_key(record["trust"], record["export_id"]),
                {"reason": reason, "attempts": record["attempts"], "at": time.time()},
            )
            self.state.dequeue(record)
            self.state.unmark_sent(record)
            self.state.put(record)
            metrics.STUDIES_DEAD.labels(record["trust"], reason).inc()
            log.error(
                "%s: study version %s failed %d times (%s): set aside",
                record["trust"],
                record["export_id"],
                record["attempts"],
                reason,
            )
            return
        record["state"] = "pending"
        self.state.enqueue(record)
        self.state.unmark_sent(record)
        self.state.put(record)
        self._pending[record["trust"]][0] += 1
        self._pending[record["trust"]][1] += record["bytes"]

    def _expire_receipts(self, code: str) -> None:
        now = time.time()
        for export_id in list(self.state.in_flight(code)):
            record = self.state.get(code, export_id)
            if record is None or record["state"] != "sent":
                self.store.delete(self.staging, layout.sent_key(code, export_id))
            elif now - float(record.get("sent_at", now)) > self.policy.receipt_timeout_seconds:
                metrics.STUDIES_REJECTED.labels(code, "no_receipt").inc()
                self._requeue(record, "no_receipt")

    # --- an operator's replay of an export.failed dead letter --------------------------------
    def retry_failed(self, message: dict[str, Any]) -> None:
        """Queue a set-aside study version for one more round of at most ``max_attempts``
        sends; a letter of an earlier round (a second replay) changes nothing."""
        body, code = message["body"], message["trust"]
        record = self.state.get(code, body["export_id"])
        if record is None:
            raise PermanentError("export.failed names no study version the exporter recorded")
        if record["state"] != "failed" or int(record.get("round", 1)) != body["round"]:
            log.info(
                "%s: study version %s replayed again (round %d): already queued or done",
                code,
                record["export_id"],
                body["round"],
            )
            return
        record.update(
            state="pending",
            round=body["round"] + 1,
            attempt_limit=record["attempts"] + self.policy.max_attempts,
        )
        self.state.enqueue(record)  # the marker before the record, as everywhere
        self.store.delete(self.staging, layout.dead_key(code, record["export_id"]))
        self.state.put(record)
        self._pending[code][0] += 1
        self._pending[code][1] += record["bytes"]
        metrics.STUDIES_REPLAYED.labels(code).inc()
        log.warning(
            "%s: study version %s queued again by an operator (round %d)",
            code,
            record["export_id"],
            record["round"],
        )
