"""The bus topology as data: one topic exchange, quorum work queues, a dead-letter queue each.

``deploy/rabbitmq/definitions.json`` holds the same for the default namespace so that a broker
can be provisioned at boot; the code declares it idempotently too (a unit test keeps the two in
agreement). Routing keys always end in the trust code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: work queue role -> binding key on the events exchange
WORK_QUEUES: dict[str, str] = {
    "anonymiser": "study.arrived.*",
    "exporter": "study.staged.*",
    "national.ingest": "export.batch.*",
    "export.receipts": "export.receipt.*",
    "clinical": "clinical.arrived.*",
}
#: further binding keys of a work queue: ``export.failed.*`` reaches the exporter only when an
#: operator replays a study the exporter dead-lettered itself (``smartbox dlq replay exporter``)
#: ``clinical.submitted.*``: what a clinical submission held back, counted by the clinical stage
EXTRA_BINDINGS: dict[str, tuple[str, ...]] = {
    "exporter": ("export.failed.*",),
    "clinical": ("clinical.submitted.*",),
}
DELIVERY_LIMIT = 5


@dataclass(frozen=True)
class Topology:
    """Names of exchanges and queues in one namespace (tests use their own namespace)."""

    namespace: str = "smartbox"

    @property
    def exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dlx(self) -> str:
        return f"{self.namespace}.dlx"

    def queue(self, role: str) -> str:
        if role not in WORK_QUEUES:
            raise KeyError(f"unknown queue role {role!r}")
        return f"{self.namespace}.{role}"

    def dlq(self, role: str) -> str:
        return f"{self.queue(role)}.dlq"

    def queue_arguments(self, role: str) -> dict[str, object]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": self.dlx,
            "x-dead-letter-routing-key": self.queue(role),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def roles(self) -> list[str]:
        return list(WORK_QUEUES)

    def delete(self, channel: Any) -> None:
        """Delete this namespace's queues, dead-letter queues and exchanges (a pika channel):
        what a test run or a benchmark declared, removed at its end."""
        for role in self.roles():
            for q in (self.queue(role), self.dlq(role)):
                channel.queue_delete(q)
        channel.exchange_delete(self.exchange)
        channel.exchange_delete(self.dlx)


def bindings(role: str) -> tuple[str, ...]:
    """Every binding key of a work queue on the events exchange (its own first)."""
    return (WORK_QUEUES[role], *EXTRA_BINDINGS.get(role, ()))


def routing_key(schema: str, trust: str) -> str:
    """``study.arrived`` + ``RTK`` -> ``study.arrived.RTK``."""
    return f"{schema}.{trust}"


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic match: ``*`` is one word, ``#`` zero or more."""
    p, k = pattern.split("."), key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return any(match(i + 1, jj) for jj in range(j, len(k) + 1))
        if j == len(k):
            return False
        return (p[i] == "*" or p[i] == k[j]) and match(i + 1, j + 1)

    return match(0, 0)
