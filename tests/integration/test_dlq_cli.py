"""Operators can list, inspect and replay dead letters with `smartbox dlq`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pika
from helpers.util import wait_for
from test_contracts import arrived

from smartbox.errors import PermanentError
from smartbox.rabbit import RabbitBus
from smartbox.topology import Topology


def cli(rabbitmq_url: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SMARTBOX_AMQP_URL=rabbitmq_url, SMARTBOX_NAMESPACE=namespace)
    return subprocess.run(
        [sys.executable, "-m", "smartbox", "dlq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def depth(url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    n = conn.channel().queue_declare(queue, passive=True).method.message_count
    conn.close()
    return int(n)


def test_list_show_replay(rabbitmq_url: str, namespace: str) -> None:
    bus = RabbitBus(rabbitmq_url, Topology(namespace))
    bus.declare()
    msgs = [arrived("RTK", 1), arrived("RGT", 2)]
    for m in msgs:
        bus.publish(m)

    def reject(_m: dict) -> None:
        raise PermanentError("quarantine object does not match its recorded sha256")

    stop = threading.Event()
    t = threading.Thread(target=bus.consume, args=("anonymiser", reject), kwargs={"stop": stop})
    t.start()
    try:
        wait_for(lambda: depth(rabbitmq_url, f"{namespace}.anonymiser.dlq") == 2, 30, "DLQ")
    finally:
        stop.set()
        t.join(10)

    listed = cli(rabbitmq_url, namespace, "list", "anonymiser")
    assert listed.returncode == 0, listed.stderr
    assert "2 message(s)" in listed.stdout
    assert listed.stdout.count("does not match its recorded sha256") == 2
    assert depth(rabbitmq_url, f"{namespace}.anonymiser.dlq") == 2  # listing removes nothing

    shown = cli(rabbitmq_url, namespace, "show", "anonymiser", "--id", msgs[1]["message_id"])
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["message"]["body"]["instance_count"] == 2

    missing = cli(rabbitmq_url, namespace, "show", "anonymiser", "--id", "nope")
    assert missing.returncode == 1

    replayed = cli(rabbitmq_url, namespace, "replay", "anonymiser", "--id", msgs[0]["message_id"])
    assert "replayed 1" in replayed.stdout
    assert depth(rabbitmq_url, f"{namespace}.anonymiser.dlq") == 1
    assert depth(rabbitmq_url, f"{namespace}.anonymiser") == 1
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    _m, _p, body = conn.channel().basic_get(f"{namespace}.anonymiser", auto_ack=True)
    conn.close()
    assert json.loads(body) == msgs[0]
    bus.close()
