"""Dead-letter queues for operators: list, inspect and replay what a stage set aside.

A message lands in ``<queue>.dlq`` with its reason in the ``x-smartbox-reason`` header (our
consumers) or an ``x-death`` entry (the broker's delivery limit). Listing never removes
anything: messages are fetched and returned unacked, so they stay in the queue. Replay
republishes to the events exchange under the message's own routing key, waits for the
broker's confirm, and only then removes it from the dead-letter queue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from .errors import TransientError
from .rabbit import _CONN_ERRORS, connection_parameters
from .topology import Topology, routing_key


@dataclass
class DeadLetter:
    message_id: str | None
    schema: str | None
    trust: str | None
    reason: str
    dead_lettered_at: int | None
    body: bytes

    def summary(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "schema": self.schema,
            "trust": self.trust,
            "reason": self.reason,
            "dead_lettered_at": self.dead_lettered_at,
        }


def _reason(headers: dict[str, Any]) -> str:
    if "x-smartbox-reason" in headers:
        return str(headers["x-smartbox-reason"])
    deaths = headers.get("x-death") or []
    if deaths:
        d = deaths[0]
        return f"broker: {d.get('reason', '?')} after {d.get('count', '?')} deliveries"
    return "unknown"


def _decode(props: pika.BasicProperties, body: bytes) -> DeadLetter:
    headers = dict(props.headers or {})
    schema = trust = None
    try:
        msg = json.loads(body)
        schema, trust = msg.get("schema"), msg.get("trust")
    except ValueError:
        pass
    return DeadLetter(
        props.message_id,
        schema,
        trust,
        _reason(headers),
        headers.get("x-smartbox-dead-lettered-at"),
        body,
    )


class DeadLetters:
    """Operations on the dead-letter queue of one work queue role."""

    def __init__(self, url: str, topology: Topology, role: str) -> None:
        self.url = url
        self.topology = topology
        self.role = role
        self.queue = topology.dlq(role)

    @contextmanager
    def _channel(self) -> Iterator[BlockingChannel]:
        try:
            conn = pika.BlockingConnection(connection_parameters(self.url))
        except _CONN_ERRORS as exc:
            raise TransientError(f"RabbitMQ unavailable ({type(exc).__name__})") from exc
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            yield ch
        finally:
            if conn.is_open:
                conn.close()  # unacked deliveries go back to the queue

    def list(self, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first, left in the queue."""
        out = []
        with self._channel() as ch:
            for _ in range(limit):
                method, props, body = ch.basic_get(self.queue, auto_ack=False)
                if method is None:
                    break
                out.append(_decode(props, body))
        return out

    def replay(self, message_id: str | None = None, limit: int = 1000) -> int:
        """Republish dead letters (all, or the one with ``message_id``); returns how many."""
        replayed = 0
        with self._channel() as ch:
            for _ in range(limit):
                method, props, body = ch.basic_get(self.queue, auto_ack=False)
                if method is None:
                    break
                letter = _decode(props, body)
                if message_id is not None and letter.message_id != message_id:
                    continue  # left unacked: returns to the queue when we close
                if letter.schema is None or letter.trust is None:
                    continue  # not a message we can route; stays for a human
                new_props = pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=props.message_id,
                    correlation_id=props.correlation_id,
                    type=props.type,
                    headers={"x-smartbox-replayed": 1},
                )
                ch.basic_publish(
                    self.topology.exchange,
                    routing_key(letter.schema, letter.trust),
                    body,
                    new_props,
                    mandatory=True,
                )
                ch.basic_ack(method.delivery_tag)
                replayed += 1
        return replayed
