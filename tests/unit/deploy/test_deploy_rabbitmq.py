"""deploy/rabbitmq: the boot-time definitions agree with the agreed bus topology.

The static checks need nothing; ``test_definitions_on_real_broker`` imports the file into a
throwaway vhost of a real RabbitMQ (via ``rabbitmqctl``), checks it with pika passive declares
and a dead-letter round trip, then deletes the vhost. It skips when no broker is reachable,
unless CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
RABBIT = ROOT / "deploy" / "rabbitmq"
NS = "smartbox"
CI = os.environ.get("CI", "").lower() == "true"

#: the topology of ARCHITECTURE.md / the deploy brief: work queue -> binding key on N.events
WORK_QUEUES = {
    "anonymiser": "study.arrived.*",
    "exporter": "study.staged.*",
    "national.ingest": "export.batch.*",
    "export.receipts": "export.receipt.*",
    "clinical": "clinical.arrived.*",
}
#: further bindings: a study the exporter dead-lettered itself, replayed by an operator
EXTRA_BINDINGS = {"exporter": ("export.failed.*",), "clinical": ("clinical.submitted.*",)}


def work_args(queue: str) -> dict[str, object]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": 5,
        "x-dead-letter-exchange": f"{NS}.dlx",
        "x-dead-letter-routing-key": queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


@pytest.fixture(scope="module")
def defs() -> dict:
    return json.loads((RABBIT / "definitions.json").read_text())


def test_vhost_and_no_secrets(defs: dict) -> None:
    assert defs["vhosts"] == [{"name": "/"}]
    for kind in ("exchanges", "queues", "bindings", "policies"):
        assert {item["vhost"] for item in defs[kind]} == {"/"}, kind
    # users and permissions are site data (a separate file in the definitions directory)
    assert "users" not in defs and "permissions" not in defs


def test_exchanges(defs: dict) -> None:
    got = {e["name"]: e for e in defs["exchanges"]}
    assert set(got) == {f"{NS}.events", f"{NS}.dlx"}
    for e in got.values():
        assert (e["type"], e["durable"], e["auto_delete"], e["internal"]) == (
            "topic",
            True,
            False,
            False,
        )


def test_queues_and_arguments(defs: dict) -> None:
    got = {q["name"]: q for q in defs["queues"]}
    expected: dict[str, dict[str, object]] = {}
    for role in WORK_QUEUES:
        name = f"{NS}.{role}"
        expected[name] = work_args(name)
        expected[f"{name}.dlq"] = {"x-queue-type": "quorum"}  # no DLX: dead letters stop here
    assert set(got) == set(expected)
    for name, args in expected.items():
        assert got[name]["arguments"] == args, name
        assert got[name]["durable"] is True and got[name]["auto_delete"] is False, name


def test_bindings(defs: dict) -> None:
    got = {
        (b["source"], b["destination"], b["destination_type"], b["routing_key"])
        for b in defs["bindings"]
    }
    expected = set()
    for role, key in WORK_QUEUES.items():
        q = f"{NS}.{role}"
        expected.add((f"{NS}.events", q, "queue", key))
        expected.add((f"{NS}.dlx", f"{q}.dlq", "queue", q))
        for extra in EXTRA_BINDINGS.get(role, ()):
            expected.add((f"{NS}.events", q, "queue", extra))
    assert got == expected


def test_policy_does_not_fight_queue_arguments(defs: dict) -> None:
    # Queue arguments carry DLX and delivery limit (the code declares the same); a policy that
    # also set them would silently win or lose depending on the key. Keep policies to placement.
    for p in defs["policies"]:
        assert p["apply-to"] in {"queues", "exchanges", "all"}
        assert not {"dead-letter-exchange", "delivery-limit", "overflow"} & set(p["definition"])


def test_conf_loads_definitions_directory() -> None:
    conf = (RABBIT / "rabbitmq.conf").read_text()
    lines = [ln.strip() for ln in conf.splitlines() if ln.strip() and not ln.startswith("#")]
    assert "load_definitions = /etc/rabbitmq/definitions.d" in lines


def test_compose_users_file_has_no_plaintext_password() -> None:
    users = json.loads((ROOT / "deploy" / "compose" / "rabbitmq-users.json").read_text())
    for u in users["users"]:
        assert "password" not in u and u["password_hash"]
    assert {(p["user"], p["vhost"]) for p in users["permissions"]} == {("smartbox", "/")}


# --- agreement with the code's own declaration -----------------------------------------------


def _code_topology():  # type: ignore[no-untyped-def]
    from smartbox import topology

    return topology


def test_code_declares_the_same_queues_and_arguments(defs: dict) -> None:
    topology = _code_topology()
    topo = topology.Topology(NS)
    assert (topo.exchange, topo.dlx) == (f"{NS}.events", f"{NS}.dlx")
    got = {q["name"]: q["arguments"] for q in defs["queues"]}
    assert sorted(topo.roles()) == sorted(WORK_QUEUES)
    for role in topo.roles():
        assert got[topo.queue(role)] == topo.queue_arguments(role), role
        assert topo.dlq(role) in got


def test_code_binds_the_same_keys(defs: dict) -> None:
    topology = _code_topology()
    diff = {
        role: (WORK_QUEUES[role], key)
        for role, key in topology.WORK_QUEUES.items()
        if WORK_QUEUES.get(role) != key
    }
    assert diff == {}
    assert topology.EXTRA_BINDINGS == EXTRA_BINDINGS


# --- the real broker -------------------------------------------------------------------------


def _amqp_url(vhost: str) -> str:
    from urllib.parse import quote

    base = os.environ.get("SMARTBOX_TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
    return f"{base}/{quote(vhost, safe='')}"


def _unavailable(why: str) -> None:
    if CI:
        pytest.fail(f"CI=true and {why}")
    pytest.skip(why)


def _ctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], input=stdin, capture_output=True, text=True, timeout=90
    )


@pytest.mark.integration
def test_definitions_on_real_broker(defs: dict) -> None:
    pika = pytest.importorskip("pika")
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl not found (needed to create a throwaway vhost)")
    vhost = f"deploytest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    created = _ctl("add_vhost", vhost)
    if created.returncode != 0:
        _unavailable(f"RabbitMQ not reachable with rabbitmqctl: {created.stderr.strip()[:200]}")
    try:
        user = os.environ.get("SMARTBOX_TEST_AMQP_USER", "guest")
        assert _ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*").returncode == 0
        # Retarget every item at the throwaway vhost so the import cannot touch anything else.
        scoped = {"vhosts": [{"name": vhost}]}
        for kind in ("exchanges", "queues", "bindings", "policies"):
            scoped[kind] = [dict(item, vhost=vhost) for item in defs[kind]]
        # via stdin: the broker node may not be allowed to read the test's temporary directory
        imported = _ctl("import_definitions", "--format", "json", stdin=json.dumps(scoped))
        assert imported.returncode == 0, imported.stderr

        conn = pika.BlockingConnection(pika.URLParameters(_amqp_url(vhost)))
        try:
            ch = conn.channel()
            deadline = time.monotonic() + 20  # the import is asynchronous
            for q in defs["queues"]:
                while True:
                    try:
                        ch.queue_declare(q["name"], passive=True)
                        break
                    except pika.exceptions.ChannelClosedByBroker:
                        assert time.monotonic() < deadline, f"queue {q['name']} never appeared"
                        time.sleep(0.5)
                        ch = conn.channel()
            for e in defs["exchanges"]:
                ch.exchange_declare(e["name"], passive=True)
            # What the code does at start: an equivalent active declare must not be refused.
            for q in defs["queues"]:
                ch.queue_declare(q["name"], durable=True, arguments=q["arguments"])
            ch.confirm_delivery()
            # Routing and dead-lettering: study.arrived.RTK -> anonymiser -> reject -> its DLQ.
            ch.basic_publish(
                f"{NS}.events",
                "study.arrived.RTK",
                b"{}",
                pika.BasicProperties(delivery_mode=2, content_type="application/json"),
                mandatory=True,
            )
            method, _, _ = ch.basic_get(f"{NS}.anonymiser")
            assert method is not None, "study.arrived.RTK was not routed to the anonymiser queue"
            ch.basic_reject(method.delivery_tag, requeue=False)
            deadline = time.monotonic() + 10
            while True:
                method, _, body = ch.basic_get(f"{NS}.anonymiser.dlq", auto_ack=True)
                if method is not None:
                    break
                assert time.monotonic() < deadline, "rejected message never reached the DLQ"
                time.sleep(0.2)
            assert body == b"{}"
            for role, key in WORK_QUEUES.items():
                probe = key.replace("*", "RGT")
                ch.basic_publish(f"{NS}.events", probe, b"{}", mandatory=True)
                ok = ch.queue_declare(f"{NS}.{role}", passive=True)
                assert ok.method.message_count == 1, (role, probe)
        finally:
            conn.close()
    finally:
        _ctl("delete_vhost", vhost)
