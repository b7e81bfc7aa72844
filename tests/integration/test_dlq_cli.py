"""Operators can list, inspect and replay dead letters with `smartbox dlq`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pika
from helpers.quarantine import part10, quarantine_batch
from helpers.receiver_env import KEY, make_trust
from helpers.util import wait_for
from test_contracts import arrived

import consumers.anonymiser as anonymiser_module
import schemas
from consumers.anonymiser import Anonymiser, Buckets
from consumers.deid import Deidentifier
from smartbox.errors import PermanentError, SchemaError
from smartbox.rabbit import RabbitBus
from smartbox.s3 import S3Store
from smartbox.settings import S3Settings
from smartbox.synthetic import make_ct_study
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


def dead_lettered(rabbitmq_url: str, namespace: str, msgs: list[dict]) -> RabbitBus:
    """Publish ``msgs`` and let an anonymiser that rejects everything dead-letter them."""
    bus = RabbitBus(rabbitmq_url, Topology(namespace))
    bus.declare()
    for m in msgs:
        bus.publish(m)

    def reject(_m: dict) -> None:
        raise PermanentError("quarantine object does not match its recorded sha256")

    stop = threading.Event()
    t = threading.Thread(target=bus.consume, args=("anonymiser", reject), kwargs={"stop": stop})
    t.start()
    try:
        queue = f"{namespace}.anonymiser.dlq"
        wait_for(lambda: depth(rabbitmq_url, queue) == len(msgs), 30, "DLQ")
    finally:
        stop.set()
        t.join(10)
    return bus


def test_list_show_replay(rabbitmq_url: str, namespace: str) -> None:
    msgs = [arrived("RTK", 1), arrived("RGT", 2)]
    bus = dead_lettered(rabbitmq_url, namespace, msgs)

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


def test_drop_one_then_all(rabbitmq_url: str, namespace: str) -> None:
    msgs = [arrived("RTK", 7), arrived("RGT", 8), arrived("RTK", 9)]
    bus = dead_lettered(rabbitmq_url, namespace, msgs)
    bus.close()
    queue = f"{namespace}.anonymiser.dlq"
    first = msgs[1]["message_id"]

    dropped = cli(rabbitmq_url, namespace, "drop", "anonymiser", "--id", first)
    assert dropped.returncode == 0, dropped.stderr
    assert depth(rabbitmq_url, queue) == 2
    lines = dropped.stdout.strip().splitlines()
    assert lines[0] == f"dropped 1 message(s) from {queue}"
    assert lines[1].split()[:3] == [first, "study.arrived", "RGT"]
    assert "does not match its recorded sha256" in lines[1]
    body = msgs[1]["body"]
    for value in (body["study_key"], body["batch_key"], msgs[1]["correlation_id"]):
        assert value not in dropped.stdout  # ids and reasons only, never the message
    listed = cli(rabbitmq_url, namespace, "list", "anonymiser")
    assert first not in listed.stdout and msgs[0]["message_id"] in listed.stdout

    again = cli(rabbitmq_url, namespace, "drop", "anonymiser", "--id", first)
    assert again.returncode == 1 and f"no message {first}" in again.stderr
    unconfirmed = cli(rabbitmq_url, namespace, "drop", "anonymiser", "--all")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    nothing = cli(rabbitmq_url, namespace, "drop", "anonymiser")
    assert nothing.returncode == 2 and "--id" in nothing.stderr
    assert depth(rabbitmq_url, queue) == 2

    everything = cli(rabbitmq_url, namespace, "drop", "anonymiser", "--all", "--yes")
    assert everything.returncode == 0, everything.stderr
    assert depth(rabbitmq_url, queue) == 0
    lines = everything.stdout.strip().splitlines()
    assert lines[0] == f"dropped 2 message(s) from {queue}"
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(
        m["message_id"] for m in (msgs[0], msgs[2])
    )
    assert depth(rabbitmq_url, f"{namespace}.anonymiser") == 0  # dropped, not replayed


def test_replaying_an_old_dead_letter_stages_the_study_with_its_odd_instance_held_back(
    rabbitmq_url: str, namespace: str, s3_server, monkeypatch
) -> None:
    """Before the reason vocabulary, one instance raising in the de-identifier made
    ``study.staged`` fail its schema and the whole study was dead-lettered (and replay failed
    the same way). Replayed now, the study is staged and announced, that instance held back."""
    store = S3Store(S3Settings(s3_server.endpoint, s3_server.access_key, s3_server.secret_key))
    buckets = Buckets(quarantine=f"q-{namespace}", staging=f"s-{namespace}")
    trust = make_trust()
    originals = [part10(ds) for ds in make_ct_study(21, series=2, per_series=10).datasets]
    message = quarantine_batch(store, trust.code, originals, bucket=buckets.quarantine)
    bus = RabbitBus(rabbitmq_url, Topology(namespace))
    bus.declare()
    bus.publish(message)

    def old_anonymiser(_m: dict) -> None:  # what the old code ended with, for this study
        raise SchemaError("study.staged v1: 1 error(s); first at /body/held_back_reasons")

    stop = threading.Event()
    t = threading.Thread(
        target=bus.consume, args=("anonymiser", old_anonymiser), kwargs={"stop": stop}
    )
    t.start()
    try:
        wait_for(lambda: depth(rabbitmq_url, f"{namespace}.anonymiser.dlq") == 1, 30, "DLQ")
    finally:
        stop.set()
        t.join(10)

    bad = originals[13]

    class RaisesOnOne(Deidentifier):
        def _process(self, ds):  # type: ignore[no-untyped-def]
            if str(ds.SOPInstanceUID).encode() in bad:
                raise NotImplementedError("an odd instance")
            return super()._process(ds)

    monkeypatch.setattr(anonymiser_module, "Deidentifier", RaisesOnOne)
    anonymiser = Anonymiser(store, bus, KEY, {trust.code: trust}, buckets)
    replayed = cli(rabbitmq_url, namespace, "replay", "anonymiser")
    assert "replayed 1" in replayed.stdout, replayed.stderr
    stop = threading.Event()
    t = threading.Thread(
        target=bus.consume, args=("anonymiser", anonymiser.handle), kwargs={"stop": stop}
    )
    t.start()
    try:
        wait_for(lambda: depth(rabbitmq_url, f"{namespace}.exporter") == 1, 60, "study.staged")
    finally:
        stop.set()
        t.join(10)
    assert depth(rabbitmq_url, f"{namespace}.anonymiser.dlq") == 0
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    _m, _p, body = conn.channel().basic_get(f"{namespace}.exporter", auto_ack=True)
    conn.close()
    staged = json.loads(body)
    schemas.validate(staged)
    assert staged["parent_ids"] == [message["message_id"]]
    assert (staged["body"]["instances_staged"], staged["body"]["held_back_reasons"]) == (
        19,
        {"deid_error": 1},
    )
    bus.close()
