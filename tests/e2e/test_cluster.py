"""Scale-out on a real three-node RabbitMQ cluster: one broker node SIGKILLed mid-flow.

A receiver, two anonymisers and the exporter run as separate processes against a cluster of
three nodes on loopback (``helpers.brokers.RabbitCluster``), given all three URLs in
``SMARTBOX_AMQP_URL``; the work queues are quorum queues with a replica on every node. The test
kills, with SIGKILL, the node that every client is connected to and that leads every queue,
while studies are being received, de-identified and recorded; keeps sending; and then checks,
per trust, that nothing was lost and nothing duplicated:

* **quarantine**: every instance sent is listed by exactly one batch manifest;
* **staging**: exactly one de-identified object per instance sent (distinct SOP Instance
  UIDs, one object each), each listed by exactly one study manifest, one manifest per batch;
  nothing held back, nothing dead-lettered;
* **the exporter's state**: one record per batch, and their instance counts add up to the
  instances sent (a second ``study.staged`` for an instance would be a second record or a
  larger count).

A redelivered message rewrites the same objects with the same bytes (deterministic keys and
content) and its second ``study.staged`` finds the exporter's record already there: that is
at-least-once delivery working, not a duplicate, and the test reports how often it happened.
Every client process must end up connected to a surviving node.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from helpers.brokers import RabbitCluster, rabbitmq_server_available
from helpers.pipeline import Pipeline
from helpers.receiver_e2e import declare_topology, storescu_outcomes, wait_dicom_port
from helpers.util import missing, wait_for

from smartbox.synthetic import make_ct_study
from smartbox.topology import WORK_QUEUES, Topology

CODE = "RTK"
PER_STUDY = 24  # 2 series of 12


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    if not rabbitmq_server_available():
        missing("Debian's rabbitmq-server is not installed: no RabbitMQ cluster can be started")
    c = RabbitCluster(tmp_path_factory.mktemp("rabbit-cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()
    assert not c.directory.exists()
    assert c.vm_pids and not [pid for pid in c.vm_pids if Path(f"/proc/{pid}").exists()]


def studies(tmp_path: Path, first_seed: int, count: int) -> list[Path]:
    files: list[Path] = []
    for seed in range(first_seed, first_seed + count):
        study = make_ct_study(seed, series=2, per_series=PER_STUDY // 2, rows=128, columns=128)
        files += study.write(tmp_path / f"study-{seed}")
    return files


def send(p: Pipeline, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["/usr/bin/storescu", "-v", "-aet", f"{CODE}_PACS", "-aec", f"SMARTBOX_{CODE}"]
        + ["127.0.0.1", str(p.trusts[CODE]), *map(str, files)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def all_accepted(sender: subprocess.Popen[str], n: int) -> None:
    out, _ = sender.communicate(timeout=240)
    assert storescu_outcomes(out) == {"Success": n}, out[-2000:]


def wait_connected_only_to(
    cluster: RabbitCluster, procs: dict[str, int], nodes: list[str], what: str
) -> None:
    """Wait until every process holds a connection on one of ``nodes``, and none elsewhere."""
    pids = set(procs.values())
    seen: dict[str, list[str]] = {}

    def check() -> bool:
        seen.clear()
        seen.update(cluster.connections())
        by_node = {
            n: {int(m) for c in names for m in re.findall(r"pid=(\d+)", c)}
            for n, names in seen.items()
        }
        there = set().union(*(by_node.get(n, set()) for n in nodes))
        elsewhere = set().union(*(v for n, v in by_node.items() if n not in nodes))
        return pids <= there and not pids & elsewhere

    try:
        wait_for(check, 60, what, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: processes {procs}, connections {seen}") from None


def staged_objects(p: Pipeline) -> list[str]:
    return [k for k in p.objects("staging", f"{CODE}/") if k.endswith(".dcm")]


def staging_manifests(p: Pipeline) -> dict[str, dict]:
    keys = [k for k in p.objects("staging", f"{CODE}/") if "/manifest-" in k]
    return {k: json.loads(p.read("staging", k)) for k in keys}


def export_records(p: Pipeline) -> list[dict]:
    keys = p.objects("staging", f"_export/studies/{CODE}/")
    return [json.loads(p.read("staging", k)) for k in keys]


def quarantine_batches(p: Pipeline) -> dict[str, dict]:
    keys = [k for k in p.objects("quarantine", f"{CODE}/") if "/batches/" in k]
    return {k: json.loads(p.read("quarantine", k)) for k in keys}


def recorded_instances(p: Pipeline) -> int:
    return sum(r["instances"] for r in export_records(p))


def test_a_broker_node_sigkilled_mid_flow_loses_and_duplicates_nothing(
    cluster: RabbitCluster, s3_server, dcmtk, tmp_path: Path
) -> None:
    first, *survivors = cluster.nodes
    # node 1 first in every client's list: every client connects there, and the queues are
    # declared through it, so it leads them all; it is the node that will be killed
    urls = ",".join(cluster.urls)
    p = Pipeline(tmp_path / "p", urls, f"c{uuid.uuid4().hex[:8]}", s3_server)
    try:
        _scenario(cluster, p, first.node, [s.node for s in survivors], tmp_path)
    finally:
        p.stop_all()


def _scenario(
    cluster: RabbitCluster, p: Pipeline, doomed: str, survivors: list[str], tmp_path: Path
) -> None:
    declare_topology(p)
    topo = Topology(p.namespace)
    every_node = sorted(n.node for n in cluster.nodes)
    for role in WORK_QUEUES:
        assert sorted(cluster.members(topo.queue(role))) == every_node, role
        assert cluster.leader(topo.queue(role)) == doomed, role

    p.add_trust(CODE, quiet_seconds=1.0)
    p.start(f"receiver-{CODE}", "receive", "--trust", CODE)
    wait_dicom_port(p, CODE)
    p.start("anonymiser-1", "anonymise")
    p.start("anonymiser-2", "anonymise")
    p.start("exporter", "export")
    procs = {name: proc.popen.pid for name, proc in p.procs.items()}

    warm_up, during, after = (
        studies(tmp_path / "warm-up", 500, 1),
        studies(tmp_path / "during", 510, 3),
        studies(tmp_path / "after", 520, 3),
    )
    sent = len(warm_up) + len(during) + len(after)
    # a first study through every stage, so that every process holds its connections
    all_accepted(send(p, warm_up), len(warm_up))
    wait_for(lambda: recorded_instances(p) == len(warm_up), 120, "the first study recorded")
    wait_connected_only_to(cluster, procs, [doomed], "every client connected to node 1 only")
    # mid-flow: the anonymisers writing the first study of three to staging while the
    # receiver may still be taking the others
    sender = send(p, during)
    wait_for(lambda: len(staged_objects(p)) > len(warm_up), 120, "staging under way", 0.05)
    cluster.nodes[0].sigkill()
    staged_at_kill = len(staged_objects(p))
    assert staged_at_kill < len(warm_up) + len(during), "the kill came after the flow"
    all_accepted(sender, len(during))
    all_accepted(send(p, after), len(after))  # through the surviving nodes only

    wait_for(lambda: recorded_instances(p) >= sent, 240, f"{sent} instances recorded for export")
    # settled: nothing ready or unacknowledged left in any work queue (a late duplicate
    # would still be there)
    wait_for(
        lambda: all(cluster.depth(topo.queue(role)) == 0 for role in WORK_QUEUES),
        60,
        "every work queue empty and acknowledged",
        0.5,
    )
    print(f"cluster: {sent} sent, {staged_at_kill} staged when {doomed} was killed")

    # every client process reconnected to a surviving node
    wait_connected_only_to(cluster, procs, survivors, "every client connected to a survivor")
    for role in WORK_QUEUES:
        assert cluster.leader(topo.queue(role)) in survivors

    # quarantine: every instance sent listed by exactly one batch
    batches = quarantine_batches(p)
    listed = [e["key"] for b in batches.values() for e in b["instances"]]
    assert len(listed) == len(set(listed)) == sent, (len(listed), len(set(listed)), sent)

    # staging: one object per instance, one manifest per batch, each instance in one manifest
    objects = staged_objects(p)
    sop_uids = Counter(
        pydicom.dcmread(io.BytesIO(p.read("staging", k)), stop_before_pixels=True).SOPInstanceUID
        for k in objects
    )
    assert len(objects) == len(sop_uids) == sent, (len(objects), len(sop_uids), sent)
    manifests = staging_manifests(p)
    assert sorted(m["batch_id"] for m in manifests.values()) == sorted(
        b["batch_id"] for b in batches.values()
    )
    in_manifests = [i["key"] for m in manifests.values() for i in m["instances"]]
    assert len(in_manifests) == len(set(in_manifests)) == sent
    assert set(in_manifests) == set(objects)
    assert all(m["held_back"] == [] for m in manifests.values())

    # the exporter: one record per batch, instance counts adding up to what was sent
    records = export_records(p)
    assert sorted(r["export_id"] for r in records) == sorted(
        m["batch_id"] for m in manifests.values()
    )
    assert sum(r["instances"] for r in records) == sent
    assert {r["state"] for r in records} == {"pending"}
    for role in ("anonymiser", "exporter"):
        assert p.queue_messages(role, dlq=True) == [], f"{role} dead-lettered something"

    # what at-least-once delivery repeated (identical rewrites, deduplicated by the exporter)
    staged_lines = Counter(
        m.group(1)
        for name in ("anonymiser-1", "anonymiser-2")
        for m in re.finditer(r"batch (\S+) staged", p.log_text(name))
    )
    repeated = sum(n - 1 for n in staged_lines.values())
    lost_connections = sum(
        p.log_text(name).count("bus connection lost") for name in ("anonymiser-1", "anonymiser-2")
    )
    print(
        f"cluster: {len(batches)} batches, {repeated} staged again after a redelivery, "
        f"{lost_connections} anonymiser consumer reconnects"
    )
    assert lost_connections >= 2  # both anonymisers' consumers were on the killed node
