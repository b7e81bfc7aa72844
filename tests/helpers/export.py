"""Staged studies and an export loop for the exporter's tests (unit: twins; integration: real).

``stage_study`` writes what the anonymiser would (de-identified objects, a valid study manifest)
and returns the ``study.staged`` message; ``ExportRig`` wires an exporter and the national
reference ingest on any stores and bus, and runs windows: a pass, then every batch ingested and
every receipt acted on, through the queues.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import schemas
from consumers.export_policy import ExportPolicy
from consumers.exporter import Exporter, ExportSummary
from consumers.ingest import NationalIngest
from smartbox import layout
from smartbox.bus import MemoryBus, handle_delivery
from smartbox.signing import Signer
from smartbox.store import ObjectStore, put_json
from smartbox.trusts import TrustConfig


def patient_of(n: int) -> str:
    return hashlib.sha256(f"patient-{n}".encode()).hexdigest()[:32].upper()


def stage_study(
    store: ObjectStore,
    trust: str,
    n: int,
    *,
    instances: int = 3,
    series: int = 1,
    patient: str | None = None,
    bucket: str = "staging",
    size: int = 300,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stage study number ``n`` of ``trust`` and return its ``study.staged`` (``source``: what
    the receiver recorded: calling AEs, days from acquisition to arrival)."""
    uid = f"2.25.{n + 1}{abs(hash(trust)) % 1000}"
    batch_id = hashlib.sha256(f"{trust}-{n}".encode()).hexdigest()[:32]
    entries = []
    for i in range(instances):
        data = (f"{trust}-{n}-{i}-".encode() * size)[:size]
        digest = hashlib.sha256(data).hexdigest()
        sop = f"2.25.{n + 1}{i + 1}"
        key = layout.staged_instance_key(trust, uid, sop, digest)
        store.put_bytes(bucket, key, data)
        entries.append(
            {
                "key": key,
                "sha256": digest,
                "size": len(data),
                "study_uid": uid,
                "series_uid": f"2.25.{n + 1}0{i % series}",
                "sop_instance_uid": sop,
                "modality": "CT",
                "patient": patient or patient_of(n),
            }
        )
    manifest = {
        "trust": trust,
        "study_uid": uid,
        "batch_id": batch_id,
        "amendment": False,
        "instances": entries,
        "held_back": [],
    }
    schemas.validate_document("staging.study", manifest)
    manifest_key = layout.study_manifest_key(trust, uid, batch_id)
    put_json(store, bucket, manifest_key, manifest)
    return schemas.make_message(
        "study.staged",
        trust=trust,
        producer="anonymiser@test",
        body={
            "study_key": hashlib.sha256(f"sk-{trust}-{n}".encode()).hexdigest()[:32],
            "batch_id": batch_id,
            "study_uid": uid,
            "bucket": bucket,
            "manifest_key": manifest_key,
            "instances_in": instances,
            "instances_staged": instances,
            "instances_held_back": 0,
            "held_back_reasons": {},
            "bytes_staged": sum(e["size"] for e in entries),
            "amendment": False,
            **({"source": source} if source is not None else {}),
        },
    )


@dataclass
class ExportRig:
    """An exporter and the national ingest on an in-process bus."""

    store: ObjectStore
    national: ObjectStore
    policy: ExportPolicy = field(default_factory=lambda: ExportPolicy(window_end=None))
    bus: MemoryBus = field(default_factory=MemoryBus)
    signer: Signer = field(default_factory=Signer.generate)
    trusts: dict[str, TrustConfig] | None = None

    def __post_init__(self) -> None:
        self.store.ensure_bucket("staging")
        self.national.ensure_bucket("national")
        self.exporter = self.new_exporter()
        self.ingest = NationalIngest(
            self.national, self.bus, verifier=self.signer.verifier(), archive_bucket="archive"
        )
        self.batches: list[dict[str, Any]] = []  # every export.batch published, in order
        self.receipts: list[dict[str, Any]] = []

    def new_exporter(self) -> Exporter:
        """A fresh exporter on the same state (a restarted process)."""
        return Exporter(
            self.store,
            self.national,
            self.bus,
            signer=self.signer,
            policy=self.policy,
            trusts=self.trusts,
        )

    def drain(self, role: str) -> list[dict[str, Any]]:
        queue = self.bus.topology.queue(role)
        out = []
        with self.bus._cond:
            msgs = list(self.bus._queues[queue])
            self.bus._queues[queue].clear()
        for m in msgs:
            out.append(json.loads(m.body))
        return out

    def deliver(self, role: str, handler: Any) -> list[dict[str, Any]]:
        """Hand every queued message of ``role`` to ``handler`` under the consumer contract."""
        handled = []
        for message in self.drain(role):
            outcome, reason = handle_delivery(role, json.dumps(message).encode(), handler, 1.0)
            assert outcome.value == "ack", reason
            handled.append(message)
        return handled

    def replay_dead_letters(self, role: str = "exporter") -> list[dict[str, Any]]:
        """What ``smartbox dlq replay ROLE`` does: every dead letter republished, under its own
        routing key, and taken off the dead-letter queue."""
        queue = self.bus.topology.dlq(role)
        with self.bus._cond:
            msgs = list(self.bus._queues[queue])
            self.bus._queues[queue].clear()
        letters = [json.loads(m.body) for m in msgs]
        for letter in letters:
            self.bus.publish(letter)
        return letters

    def window(self, *, tamper: Any = None) -> ExportSummary:
        """One export window: a pass, ingest (after ``tamper(national)``), receipts acted on."""
        summary = self.exporter.export_pass()
        if tamper is not None:
            tamper(self.national)
        self.batches += self.deliver("national.ingest", self.ingest.handle)
        self.receipts += self.deliver("export.receipts", self.exporter.handle_receipt)
        return summary

    def exported_studies(self) -> list[str]:
        """Export ids in every distinct batch published (a republish counts once)."""
        seen: dict[str, list[str]] = {}
        for b in self.batches:
            seen[b["body"]["batch_id"]] = [s["export_id"] for s in b["body"]["studies"]]
        return sorted(i for ids in seen.values() for i in ids)
