"""``Bus`` on RabbitMQ with pika.

pika is not thread-safe, so: every thread that publishes gets its own connection and confirm
channel (``threading.local``); a consumer owns one connection on its own thread, hands each
delivery to a worker pool, and the workers settle (ack/nack) through
``connection.add_callback_threadsafe`` so that the connection thread keeps heartbeats flowing
while long work runs. Publishing is always persistent, ``mandatory=True`` and confirmed.
A lost connection is re-opened with backoff; unacked deliveries come back from the broker and
every stage is idempotent, so redelivery is harmless.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pika.exceptions as pex
from pika.adapters.blocking_connection import BlockingChannel
from tenacity import Retrying, retry_if_exception_type, wait_exponential, wait_random

import schemas

from . import metrics, validate
from .bus import Handler, Outcome, encode, handle_delivery
from .errors import ConfigError, TransientError
from .topology import WORK_QUEUES, Topology, bindings, routing_key

log = logging.getLogger(__name__)
_CONN_ERRORS = (pex.AMQPConnectionError, pex.AMQPChannelError, pex.StreamLostError, OSError)


def connection_parameters(
    url: str, *, heartbeat: int = 30, client: str = "smartbox"
) -> list[pika.URLParameters]:
    """pika's parameters for ``url``: one broker URL or several separated by commas (the nodes
    of a cluster). pika tries them in the order given, once each, and connects to the first
    that answers, so a client whose node died reconnects to a surviving one. The connection
    is named after the client, its process id and thread (``rabbitmqctl list_connections
    user_provided_name`` tells which process holds which connection, on which node)."""
    name = f"{client} pid={os.getpid()} {threading.current_thread().name}"
    out = []
    for one in validate.broker_urls(url):
        params = pika.URLParameters(one)
        params.heartbeat = heartbeat
        params.blocked_connection_timeout = 120
        params.connection_attempts = 1
        params.socket_timeout = 10
        params.client_properties = {"connection_name": name}
        out.append(params)
    return out


class RabbitBus:
    """The production bus."""

    def __init__(
        self,
        url: str,
        topology: Topology | None = None,
        *,
        validate_on_publish: bool = True,
        heartbeat: int = 30,
        client: str = "smartbox",
    ) -> None:
        self.url = url
        self.heartbeat = heartbeat
        self.client = client
        self.topology = topology or Topology()
        self.validate_on_publish = validate_on_publish
        self._local = threading.local()
        self._lock = threading.Lock()
        self._publishers: list[pika.BlockingConnection] = []

    def _connect(self) -> pika.BlockingConnection:
        try:
            return pika.BlockingConnection(
                connection_parameters(self.url, heartbeat=self.heartbeat, client=self.client)
            )
        except _CONN_ERRORS as exc:
            raise TransientError(f"RabbitMQ unavailable ({type(exc).__name__})") from exc

    # --- topology -----------------------------------------------------------------------
    def declare(self) -> None:
        conn = self._connect()
        try:
            ch = conn.channel()
            t = self.topology
            ch.exchange_declare(t.exchange, "topic", durable=True)
            ch.exchange_declare(t.dlx, "topic", durable=True)
            for role in WORK_QUEUES:
                ch.queue_declare(t.queue(role), durable=True, arguments=t.queue_arguments(role))
                for pattern in bindings(role):
                    ch.queue_bind(t.queue(role), t.exchange, routing_key=pattern)
                ch.queue_declare(t.dlq(role), durable=True, arguments={"x-queue-type": "quorum"})
                ch.queue_bind(t.dlq(role), t.dlx, routing_key=t.queue(role))
        except pex.ChannelClosedByBroker as exc:
            raise ConfigError(
                f"RabbitMQ refused the topology ({exc.reply_code}): an existing queue has "
                "other arguments; see deploy/rabbitmq/definitions.json"
            ) from exc
        except _CONN_ERRORS as exc:
            raise TransientError(f"RabbitMQ unavailable ({type(exc).__name__})") from exc
        finally:
            _close(conn)

    # --- publishing ---------------------------------------------------------------------
    def _channel(self) -> BlockingChannel:
        ch: BlockingChannel | None = getattr(self._local, "channel", None)
        if ch is not None and ch.is_open:
            return ch
        old = getattr(self._local, "connection", None)
        if old is not None:
            _close(old)
        conn = self._connect()
        ch = conn.channel()
        ch.confirm_delivery()
        self._local.connection, self._local.channel = conn, ch
        with self._lock:
            self._publishers.append(conn)
        return ch

    def _reset_channel(self) -> None:
        conn = getattr(self._local, "connection", None)
        if conn is not None:
            _close(conn)
        self._local.connection = self._local.channel = None

    def publish(self, message: dict[str, Any]) -> None:
        if self.validate_on_publish:
            schemas.validate(message)
        key = routing_key(message["schema"], message["trust"])
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=message["message_id"],
            correlation_id=message["correlation_id"],
            type=message["schema"],
            headers={"schema_version": message["version"], "trust": message["trust"]},
        )
        self._publish_raw(self.topology.exchange, key, encode(message), props)

    def _publish_raw(
        self, exchange: str, key: str, body: bytes, props: pika.BasicProperties
    ) -> None:
        try:
            self._channel().basic_publish(exchange, key, body, props, mandatory=True)
        except pex.UnroutableError as exc:
            raise TransientError(f"unroutable: no queue bound for {key}") from exc
        except pex.NackError as exc:
            raise TransientError(f"broker refused {key} (nack)") from exc
        except _CONN_ERRORS as exc:
            self._reset_channel()
            raise TransientError(f"publish {key} failed ({type(exc).__name__})") from exc

    def dead_letter(
        self, role: str, body: bytes, props: pika.BasicProperties | None, reason: str
    ) -> None:
        """Publish a copy of a delivery to the role's DLQ with the reason (confirmed)."""
        headers = dict((props.headers or {}) if props else {})
        headers["x-smartbox-reason"] = reason[:1000]
        headers["x-smartbox-stage"] = role
        headers["x-smartbox-dead-lettered-at"] = int(time.time())
        new_props = pika.BasicProperties(
            content_type=props.content_type if props else "application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=props.message_id if props else None,
            correlation_id=props.correlation_id if props else None,
            type=props.type if props else None,
            headers=headers,
        )
        self._publish_raw(self.topology.dlx, self.topology.queue(role), body, new_props)

    def dead_letter_message(self, role: str, message: dict[str, Any], reason: str) -> None:
        """A message of our own straight into the role's DLQ (``Bus.dead_letter_message``)."""
        if self.validate_on_publish:
            schemas.validate(message)
        props = pika.BasicProperties(
            content_type="application/json",
            message_id=message["message_id"],
            correlation_id=message["correlation_id"],
            type=message["schema"],
            headers={"schema_version": message["version"], "trust": message["trust"]},
        )
        self.dead_letter(role, encode(message), props, reason)

    # --- consuming ----------------------------------------------------------------------
    def consume(
        self,
        role: str,
        handler: Handler,
        *,
        stop: threading.Event,
        prefetch: int = 4,
        retry_seconds: float = 300.0,
    ) -> None:
        # tenacity drives the reconnects: exponential backoff with jitter, capped at 30 s,
        # for as long as the process runs (an outage pauses consumption, it does not end it)
        retrying = Retrying(
            retry=retry_if_exception_type((TransientError, *_CONN_ERRORS)),
            wait=wait_exponential(multiplier=0.5, max=30) + wait_random(0, 0.5),
            sleep=lambda seconds: None if stop.wait(seconds) else None,
            stop=lambda _state: stop.is_set(),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "%s: bus connection lost (attempt %d); reconnecting", role, state.attempt_number
            ),
        )
        while not stop.is_set():
            try:
                retrying(self._consume_once, role, handler, stop, prefetch, retry_seconds)
            except (TransientError, *_CONN_ERRORS):
                return  # stop was set while the bus was unreachable

    def _consume_once(
        self,
        role: str,
        handler: Handler,
        stop: threading.Event,
        prefetch: int,
        retry_seconds: float,
    ) -> None:
        conn = self._connect()
        pool = ThreadPoolExecutor(prefetch, thread_name_prefix=f"{role}-worker")
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=prefetch)

            def settle(tag: int, outcome: Outcome) -> None:
                if not ch.is_open:
                    return  # the broker redelivers what this channel held
                if outcome is Outcome.REQUEUE:
                    ch.basic_nack(tag, requeue=True)
                else:
                    ch.basic_ack(tag)

            def work(tag: int, props: pika.BasicProperties, body: bytes) -> None:
                outcome, reason = handle_delivery(role, body, handler, retry_seconds)
                if outcome is Outcome.DEAD_LETTER:
                    try:
                        self.dead_letter(role, body, props, reason or "unknown")
                        log.error("%s: dead-lettered %s: %s", role, props.message_id, reason)
                    except TransientError:
                        outcome = Outcome.REQUEUE
                metrics.MESSAGES_CONSUMED.labels(role, outcome.value).inc()
                try:
                    conn.add_callback_threadsafe(functools.partial(settle, tag, outcome))
                except _CONN_ERRORS:
                    pass  # connection gone: redelivered

            def on_message(
                _ch: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes
            ) -> None:
                pool.submit(work, method.delivery_tag, props, body)

            ch.basic_consume(self.topology.queue(role), on_message)
            log.info("%s: consuming %s (prefetch %d)", role, self.topology.queue(role), prefetch)
            while not stop.is_set():
                conn.process_data_events(time_limit=0.5)
            ch.stop_consuming()
            pool.shutdown(wait=True)
            conn.process_data_events(time_limit=0.2)  # flush the last settlements
        except _CONN_ERRORS as exc:
            raise TransientError(f"consumer connection failed ({type(exc).__name__})") from exc
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            _close(conn)

    def ping(self) -> bool:
        try:
            _close(self._connect())
        except TransientError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            conns, self._publishers = self._publishers, []
        for conn in conns:
            _close(conn)


def _close(conn: pika.BlockingConnection) -> None:
    try:
        if conn.is_open:
            conn.close()
    except Exception:  # noqa: BLE001,S110 - closing a broken connection may fail; nothing to do
        pass
