"""Dead-letter queues for operators: list, inspect, replay and drop what a stage set aside.

A message lands in ``<queue>.dlq`` with its reason in the ``x-smartbox-reason`` header (our
consumers) or an ``x-death`` entry (the broker's delivery limit). Listing never removes
anything: messages are fetched and returned unacked, so they stay in the queue. Replay
republishes to the events exchange under the message's own routing key, waits for the
broker's confirm, and only then removes it from the dead-letter queue. Drop removes a message
for good (acked, never republished) and returns what it was, without its body.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from .errors import ConfigError, TransientError
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

    def line(self) -> str:
        """One line for an operator: id, schema, trust, reason (never the body)."""
        return f"{self.message_id}  {self.schema or '?'}  {self.trust or '?'}  {self.reason}"

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


#: (``DeadLetters.list`` shadows the builtin inside that class)
Letters = list[DeadLetter]


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
        # a missing queue closes the channel, which pika logs as a warning; the operator gets
        # our one line instead (below)
        channel_log = logging.getLogger("pika.channel")
        level = channel_log.level
        channel_log.setLevel(logging.ERROR)
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            yield ch
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise TransientError(f"RabbitMQ closed the channel ({exc.reply_code})") from exc
            # no such queue: nothing has run in this namespace yet, or it is mistyped
            raise ConfigError(
                f"no queue {self.queue} on the broker: is SMARTBOX_NAMESPACE "
                f"({self.topology.namespace}) right? (a stage declares its queues when it "
                "first starts)"
            ) from None
        finally:
            channel_log.setLevel(level)
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

    def drop(self, message_id: str | None, limit: int = 1000) -> Letters:
        """Remove the dead letter with ``message_id`` (None: every one in the queue when the
        call starts, whatever ``limit``); returns what was removed."""
        dropped: Letters = []
        with self._channel() as ch:
            if message_id is None:
                # only what is there now: a letter arriving meanwhile is not dropped unseen
                limit = ch.queue_declare(self.queue, passive=True).method.message_count
            for _ in range(limit):
                method, props, body = ch.basic_get(self.queue, auto_ack=False)
                if method is None:
                    break
                letter = _decode(props, body)
                if message_id is not None and letter.message_id != message_id:
                    continue  # left unacked: returns to the queue when we close
                ch.basic_ack(method.delivery_tag)
                dropped.append(letter)
                if message_id is not None:
                    break
        return dropped

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
