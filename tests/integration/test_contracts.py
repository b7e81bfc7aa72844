"""One contract suite for both adapters of each seam: in-memory twin and real server."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pika
import pytest
from helpers.util import wait_for

import schemas
from smartbox.bus import MemoryBus
from smartbox.errors import NotFound, PermanentError, SchemaError, TransientError
from smartbox.rabbit import RabbitBus
from smartbox.s3 import S3Store
from smartbox.settings import S3Settings
from smartbox.store import LocalStore
from smartbox.topology import Topology


def arrived(trust: str = "RTK", n: int = 1) -> dict:
    return schemas.make_message(
        "study.arrived",
        trust=trust,
        producer=f"receiver/{trust}@test",
        body={
            "study_key": f"{n:032x}",
            "bucket": "quarantine",
            "batch_key": f"{trust}/x/batches/{n:032x}.json",
            "batch_id": f"{n:032x}",
            "instance_count": n,
            "bytes": 10,
            "modalities": ["CT"],
            "amendment": False,
            "first_received_at": "2026-11-28T10:00:00Z",
            "last_received_at": "2026-11-28T10:00:00Z",
        },
    )


@pytest.fixture(params=["memory", "rabbitmq"])
def bus(request: pytest.FixtureRequest):
    if request.param == "memory":
        yield MemoryBus(Topology("mem"))
        return
    ns = request.getfixturevalue("namespace")
    b = RabbitBus(request.getfixturevalue("rabbitmq_url"), Topology(ns))
    b.declare()
    yield b
    b.close()


def dlq_messages(bus, role: str) -> list[tuple[dict, dict]]:
    """(message, headers) in a role's dead-letter queue, for either bus."""
    if isinstance(bus, MemoryBus):
        return bus.messages(bus.topology.dlq(role))
    import json

    conn = pika.BlockingConnection(pika.URLParameters(bus.url))
    ch = conn.channel()
    out = []
    while True:
        method, props, body = ch.basic_get(bus.topology.dlq(role), auto_ack=True)
        if method is None:
            break
        out.append((json.loads(body), dict(props.headers or {})))
    conn.close()
    return out


def consume_in_thread(bus, role, handler, **kw):
    stop = threading.Event()
    t = threading.Thread(target=bus.consume, args=(role, handler), kwargs={"stop": stop, **kw})
    t.start()
    return stop, t


def test_publish_routes_by_trust_and_acks(bus) -> None:
    seen: list[dict] = []
    for n in range(1, 6):
        bus.publish(arrived("RTK" if n % 2 else "RGT", n))
    stop, t = consume_in_thread(bus, "anonymiser", seen.append, prefetch=2)
    try:
        wait_for(lambda: len(seen) == 5, 20, "5 deliveries")
    finally:
        stop.set()
        t.join(10)
    assert sorted(m["body"]["instance_count"] for m in seen) == [1, 2, 3, 4, 5]
    assert {m["trust"] for m in seen} == {"RTK", "RGT"}
    # acked: nothing comes back on a second consumer
    again: list[dict] = []
    stop, t = consume_in_thread(bus, "anonymiser", again.append)
    time.sleep(1.0)
    stop.set()
    t.join(10)
    assert again == []


def test_permanent_error_dead_letters_with_reason(bus) -> None:
    def handler(msg: dict) -> None:
        raise PermanentError("batch manifest does not belong to this message")

    bus.publish(arrived())
    stop, t = consume_in_thread(bus, "anonymiser", handler)
    try:
        dead = wait_for(lambda: dlq_messages(bus, "anonymiser"), 20, "a dead letter")
    finally:
        stop.set()
        t.join(10)
    msg, headers = dead[0]
    assert msg["body"]["instance_count"] == 1
    assert "does not belong" in headers["x-smartbox-reason"]


def test_transient_error_is_retried_then_succeeds(bus) -> None:
    calls: list[int] = []

    def handler(msg: dict) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("S3 unavailable")

    bus.publish(arrived())
    stop, t = consume_in_thread(bus, "anonymiser", handler, retry_seconds=30)
    try:
        wait_for(lambda: len(calls) >= 3, 30, "three attempts")
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(10)
    assert len(calls) == 3
    assert dlq_messages(bus, "anonymiser") == []


def test_transient_error_forever_ends_in_dlq(bus) -> None:
    def handler(msg: dict) -> None:
        raise TransientError("still down")

    bus.publish(arrived())
    stop, t = consume_in_thread(bus, "anonymiser", handler, retry_seconds=0.2)
    try:
        dead = wait_for(lambda: dlq_messages(bus, "anonymiser"), 60, "delivery limit")
    finally:
        stop.set()
        t.join(10)
    assert dead[0][0]["body"]["instance_count"] == 1


def test_invalid_message_is_refused_on_publish(bus) -> None:
    msg = arrived()
    msg["body"]["patient_name"] = "SMITH^JOHN"
    with pytest.raises(SchemaError):
        bus.publish(msg)


# --- object store -----------------------------------------------------------------------
@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        s = LocalStore(tmp_path / "objects")
    else:
        srv = request.getfixturevalue("s3_server")
        s = S3Store(S3Settings(srv.endpoint, srv.access_key, srv.secret_key))
    s.ensure_bucket("contract")
    s.ensure_bucket("contract")  # idempotent
    for key in list(s.list_keys("contract")):
        s.delete("contract", key)
    return s


def test_store_round_trip(store, tmp_path: Path) -> None:
    store.put_bytes("contract", "RTK/a/b.dcm", b"\x00" * 1000)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 40000)
    store.put_file("contract", "RTK/a/c.dcm", big)
    store.put_bytes("contract", "RGT/z.json", b"{}")
    assert store.get_bytes("contract", "RTK/a/b.dcm") == b"\x00" * 1000
    assert store.get_bytes("contract", "RTK/a/c.dcm") == big.read_bytes()
    assert store.size("contract", "RTK/a/c.dcm") == big.stat().st_size
    assert list(store.list_keys("contract", "RTK/")) == ["RTK/a/b.dcm", "RTK/a/c.dcm"]
    assert store.exists("contract", "RGT/z.json")
    entries = list(store.list_entries("contract", "RTK/"))
    assert [(k, n) for k, n, _t in entries] == [
        ("RTK/a/b.dcm", 1000),
        ("RTK/a/c.dcm", big.stat().st_size),
    ]
    assert all(abs(t - time.time()) < 600 for _k, _n, t in entries)
    store.delete("contract", "RGT/z.json")
    store.delete("contract", "RGT/z.json")
    assert not store.exists("contract", "RGT/z.json")
    with pytest.raises(NotFound):
        store.get_bytes("contract", "RGT/z.json")
    with pytest.raises(PermanentError):
        store.put_bytes("contract", "../escape", b"x")
    assert store.ping()


def test_s3_unreachable_is_transient() -> None:
    s = S3Store(S3Settings("127.0.0.1:1", "a", "b"), timeout=1)
    with pytest.raises(TransientError):
        s.get_bytes("quarantine", "x")
    assert not s.ping()


def test_rabbitmq_unreachable_is_transient() -> None:
    b = RabbitBus("amqp://guest:guest@127.0.0.1:1/%2F")
    with pytest.raises(TransientError):
        b.publish(arrived())
    assert not b.ping()


def test_long_work_keeps_the_connection_alive(rabbitmq_url: str, namespace: str) -> None:
    """Work far longer than the heartbeat runs off the connection thread: one delivery, one ack."""
    bus = RabbitBus(rabbitmq_url, Topology(namespace), heartbeat=1)
    bus.declare()
    bus.publish(arrived())
    calls: list[float] = []

    def slow(msg: dict) -> None:
        calls.append(time.monotonic())
        time.sleep(6)  # six heartbeat intervals

    stop, t = consume_in_thread(bus, "anonymiser", slow, prefetch=1)
    try:
        wait_for(lambda: calls, 20, "the delivery")
        time.sleep(8)
    finally:
        stop.set()
        t.join(15)
    assert len(calls) == 1, "the message was redelivered: the connection dropped mid-work"
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    depth = conn.channel().queue_declare(f"{namespace}.anonymiser", passive=True)
    conn.close()
    assert depth.method.message_count == 0
    bus.close()
