"""The message-bus seam: a narrow protocol, the consumer outcome contract, and the in-process twin.

Outcome contract (every consumer, either bus):

* the handler returns normally -> **ack** (its side effects are durable and any event it
  published was confirmed by the broker before it returned);
* it raises ``TransientError`` -> retried in place with backoff for ``retry_seconds``, then
  **requeued**; the broker's delivery limit dead-letters a message that keeps failing;
* it raises ``PermanentError`` (or the message fails its schema) -> **dead-lettered** with the
  reason in the ``x-smartbox-reason`` header, then acked; never retried blindly;
* anything unexpected (a bug) -> requeued, so the delivery limit bounds it.

``MemoryBus`` implements the same protocol in-process for ``smartbox demo`` and unit tests;
``smartbox.rabbit.RabbitBus`` implements it on RabbitMQ with pika.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import schemas

from . import logs, metrics
from .errors import PermanentError, SchemaError, TransientError
from .retry import call_with_retry
from .topology import (
    DELIVERY_LIMIT,
    WORK_QUEUES,
    Topology,
    bindings,
    routing_key,
    topic_matches,
)

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], None]


class Outcome(enum.Enum):
    ACK = "ack"
    REQUEUE = "retry"
    DEAD_LETTER = "dead_letter"


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode()


def handle_delivery(
    stage: str, body: bytes, handler: Handler, retry_seconds: float
) -> tuple[Outcome, str | None]:
    """Decode, validate and handle one delivery; decide its outcome. Never raises."""
    try:
        message = json.loads(body)
        if not isinstance(message, dict):
            raise SchemaError("message is not a JSON object")
        schemas.validate(message)
    except (ValueError, SchemaError) as exc:
        reason = f"schema: {exc}" if isinstance(exc, SchemaError) else "schema: not JSON"
        return Outcome.DEAD_LETTER, reason
    trust = str(message.get("trust", "unknown"))
    with logs.message_context(message):  # every line logged while handling it carries its ids
        return _handle(stage, message, trust, handler, retry_seconds)


def _handle(
    stage: str, message: dict[str, Any], trust: str, handler: Handler, retry_seconds: float
) -> tuple[Outcome, str | None]:
    try:
        call_with_retry(
            lambda: handler(message),
            what=f"{stage} {message.get('message_id')}",
            max_seconds=retry_seconds,
        )
    except PermanentError as exc:
        metrics.FAILURES.labels(trust, stage, "permanent").inc()
        return Outcome.DEAD_LETTER, f"{type(exc).__name__}: {exc}"
    except TransientError as exc:
        metrics.FAILURES.labels(trust, stage, "transient").inc()
        return Outcome.REQUEUE, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a bug must not kill the consumer
        log.exception("%s: unexpected error handling %s", stage, message.get("message_id"))
        metrics.FAILURES.labels(trust, stage, "unexpected").inc()
        return Outcome.REQUEUE, type(exc).__name__
    return Outcome.ACK, None


class Bus(Protocol):
    """What smartbox needs from a message bus."""

    topology: Topology

    def declare(self) -> None:
        """Create exchanges, queues and bindings if absent (idempotent)."""

    def publish(self, message: dict[str, Any]) -> None:
        """Publish persistently; return once the broker confirmed it (else TransientError)."""

    def consume(
        self,
        role: str,
        handler: Handler,
        *,
        stop: threading.Event,
        prefetch: int = 4,
        retry_seconds: float = 300.0,
    ) -> None:
        """Deliver messages of a work queue to ``handler`` until ``stop`` is set."""

    def dead_letter_message(self, role: str, message: dict[str, Any], reason: str) -> None:
        """Put a message a stage made itself straight into ``role``'s dead-letter queue with
        ``reason`` (confirmed), where ``smartbox dlq`` lists and replays it like any poison."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...


@dataclass
class _Msg:
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    deliveries: int = 0


class MemoryBus:
    """In-process bus with the same routing, outcome contract and dead-lettering as RabbitMQ."""

    def __init__(self, topology: Topology | None = None, *, validate_on_publish: bool = True):
        self.topology = topology or Topology()
        self.validate_on_publish = validate_on_publish
        self._queues: dict[str, deque[_Msg]] = {}
        self._cond = threading.Condition()
        self.declare()

    def declare(self) -> None:
        with self._cond:
            for role in WORK_QUEUES:
                self._queues.setdefault(self.topology.queue(role), deque())
                self._queues.setdefault(self.topology.dlq(role), deque())

    def publish(self, message: dict[str, Any]) -> None:
        if self.validate_on_publish:
            schemas.validate(message)
        key = routing_key(message["schema"], message["trust"])
        body = encode(message)
        with self._cond:
            targets = [r for r in WORK_QUEUES if any(topic_matches(p, key) for p in bindings(r))]
            if not targets:
                raise TransientError(f"unroutable: no queue bound for {key}")
            for role in targets:
                self._queues[self.topology.queue(role)].append(_Msg(body))
            self._cond.notify_all()

    def dead_letter_message(self, role: str, message: dict[str, Any], reason: str) -> None:
        if self.validate_on_publish:
            schemas.validate(message)
        with self._cond:
            headers = {"x-smartbox-reason": reason, "x-smartbox-stage": role}
            self._queues[self.topology.dlq(role)].append(_Msg(encode(message), headers))
            self._cond.notify_all()

    def messages(self, queue: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Snapshot of a queue: (message, headers) pairs (for tests and the demo)."""
        with self._cond:
            return [(json.loads(m.body), dict(m.headers)) for m in self._queues[queue]]

    def depth(self, queue: str) -> int:
        with self._cond:
            return len(self._queues[queue])

    def consume(
        self,
        role: str,
        handler: Handler,
        *,
        stop: threading.Event,
        prefetch: int = 4,
        retry_seconds: float = 300.0,
    ) -> None:
        queue = self.topology.queue(role)
        in_flight = threading.Semaphore(prefetch)
        with ThreadPoolExecutor(prefetch, thread_name_prefix=f"mem-{role}") as pool:
            while not stop.is_set():
                if not in_flight.acquire(timeout=0.2):
                    continue
                with self._cond:
                    if not self._queues[queue]:
                        self._cond.wait(0.2)
                    msg = self._queues[queue].popleft() if self._queues[queue] else None
                if msg is None:
                    in_flight.release()
                    continue
                msg.deliveries += 1
                pool.submit(self._work, role, queue, msg, handler, retry_seconds, in_flight)

    def _work(
        self,
        role: str,
        queue: str,
        msg: _Msg,
        handler: Handler,
        retry_seconds: float,
        in_flight: threading.Semaphore,
    ) -> None:
        try:
            outcome, reason = handle_delivery(role, msg.body, handler, retry_seconds)
            metrics.MESSAGES_CONSUMED.labels(role, outcome.value).inc()
            with self._cond:
                if outcome is Outcome.DEAD_LETTER or (
                    outcome is Outcome.REQUEUE and msg.deliveries >= DELIVERY_LIMIT
                ):
                    msg.headers["x-smartbox-reason"] = reason or "delivery_limit"
                    self._queues[self.topology.dlq(role)].append(msg)
                elif outcome is Outcome.REQUEUE:
                    self._queues[queue].append(msg)
                self._cond.notify_all()
            if outcome is Outcome.REQUEUE:
                time.sleep(0.1)
        finally:
            in_flight.release()

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        return None
