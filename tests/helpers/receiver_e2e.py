"""Counting what a receiver process published: study.arrived messages drained from the test
namespace's anonymiser queue, checked against the batch manifests in quarantine."""

from __future__ import annotations

import io
import json
import re
import socket
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pydicom

from smartbox.rabbit import RabbitBus
from smartbox.topology import Topology

from .pipeline import Pipeline
from .util import wait_for


def declare_topology(p: Pipeline) -> None:
    """The receiver publishes with ``mandatory``: the queues must exist before it does."""
    bus = RabbitBus(p.amqp_url, Topology(p.namespace))
    bus.declare()
    bus.close()


@dataclass
class Arrivals:
    """Every study.arrived seen so far (deduplicated by batch id: a republished batch after a
    crash between the broker's confirm and the ledger commit is the same batch)."""

    p: Pipeline
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: int = 0

    def poll(self) -> Arrivals:
        for message in self.p.queue_messages("anonymiser"):
            self.deliveries += 1
            self.batches.setdefault(message["body"]["batch_id"], message)
        return self

    def messages(self, code: str) -> list[dict[str, Any]]:
        return [m for m in self.batches.values() if m["trust"] == code]

    def instances(self, code: str) -> int:
        """Sum of instance_count over the trust's distinct batches."""
        return sum(m["body"]["instance_count"] for m in self.messages(code))

    def wait(self, code: str, count: int, timeout: float = 120) -> None:
        wait_for(
            lambda: self.poll().instances(code) >= count,
            timeout,
            f"{code}: {count} instances announced in study.arrived",
            interval=0.5,
        )

    def announced_keys(self, code: str) -> list[str]:
        """Quarantine keys listed by the trust's batches (one entry per announced instance)."""
        keys: list[str] = []
        for m in self.messages(code):
            manifest = json.loads(self.p.read("quarantine", m["body"]["batch_key"]))
            keys += [e["key"] for e in manifest["instances"]]
        return keys

    def assert_exactly_once(self, code: str, expected: int) -> None:
        """Every accepted instance announced once: counts, distinct keys, one new-study batch
        per study, and every announced object present in quarantine."""
        keys = self.announced_keys(code)
        assert self.instances(code) == expected, (self.instances(code), expected)
        assert len(keys) == len(set(keys)) == expected, "an instance was announced twice"
        firsts = Counter(
            m["body"]["study_key"] for m in self.messages(code) if not m["body"]["amendment"]
        )
        assert all(n == 1 for n in firsts.values()), "a study was announced as new twice"
        stored = set(quarantine_instances(self.p, code))
        assert set(keys) <= stored


def wait_dicom_port(p: Pipeline, code: str, timeout: float = 30) -> None:
    """The receiver serves /healthz before its DICOM port is open: wait for the port."""

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", p.trusts[code]), 1).close()
        except OSError:
            return False
        return True

    wait_for(listening, timeout, f"{code}: DICOM port open")


def quarantine_instances(p: Pipeline, code: str) -> list[str]:
    return [k for k in p.objects("quarantine", f"{code}/") if k.endswith(".dcm")]


def stored_syntaxes(p: Pipeline, code: str) -> Counter[str]:
    """Transfer syntax (from the stored File Meta Information) of every quarantine object."""
    out: Counter[str] = Counter()
    for key in quarantine_instances(p, code):
        ds = pydicom.dcmread(io.BytesIO(p.read("quarantine", key)), stop_before_pixels=True)
        out[str(ds.file_meta.TransferSyntaxUID)] += 1
    return out


def storescu_outcomes(output: str) -> Counter[str]:
    """Counts of storescu -v store responses: 'Success', 'Refused: OutOfResources', ..."""
    return Counter(re.findall(r"Received Store Response \(([^)]*)\)", output))
