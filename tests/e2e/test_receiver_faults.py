"""Faults while a PACS is sending, against the real receiver process: SIGKILL mid-association
and mid-relay, RabbitMQ down for 30 s (a dedicated broker node), the S3 server down (a private
SeaweedFS), the spool at its high-water mark. After recovery, per trust: the instances
acknowledged are exactly the instances announced in study.arrived, each once."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.brokers import DedicatedRabbitMQ, PrivateS3, rabbitmq_server_available
from helpers.pipeline import Pipeline
from helpers.receiver_e2e import (
    Arrivals,
    declare_topology,
    quarantine_instances,
    storescu_outcomes,
    wait_dicom_port,
)
from helpers.tcp import TcpGate
from helpers.util import missing, wait_for

from smartbox.synthetic import make_ct_study

IN_CI_MISSING = "Debian's rabbitmq-server is needed for a dedicated broker node"


def storescu_async(p: Pipeline, code: str, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["/usr/bin/storescu", "-v", "-aet", f"{code}_PACS", "-aec", f"SMARTBOX_{code}"]
        + ["127.0.0.1", str(p.trusts[code]), *map(str, files)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def send_all(p: Pipeline, code: str, files: list[Path]) -> int:
    """Send like a PACS that retries what was refused; returns how many attempts it took."""
    remaining, attempts = list(files), 0
    while remaining:
        attempts += 1
        assert attempts <= 20, "the receiver kept refusing"
        result = p.storescu(code, remaining, "-v")
        accepted = storescu_outcomes(result.stdout + result.stderr)["Success"]
        remaining = remaining[accepted:]  # storescu stops at the first refusal
        if remaining:
            time.sleep(1.0)
    return attempts


def receiver_pids(p: Pipeline, name: str) -> list[int]:
    pid = p.procs[name].popen.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def start_receiver(p: Pipeline, code: str, quiet: float = 1.0, extra: str = "") -> None:
    if code not in p.trusts:
        p.add_trust(code, quiet_seconds=quiet, extra=extra)
    p.start(f"receiver-{code}", "receive", "--trust", code)
    wait_dicom_port(p, code)


def test_sigkill_mid_association_then_the_pacs_resends(pipeline: Pipeline, tmp_path: Path) -> None:
    p, n = pipeline, 200
    declare_topology(p)
    start_receiver(p, "RTK")
    files = make_ct_study(400, series=2, per_series=n // 2, rows=512, columns=512).write(tmp_path)
    sender = storescu_async(p, "RTK", files)
    wait_for(
        lambda: p.metric("receiver-RTK", "smartbox_instances_received_total", trust="RTK") >= 30,
        60,
        "30 instances received",
        0.02,
    )
    pids = receiver_pids(p, "receiver-RTK")
    p.kill("receiver-RTK", signal.SIGKILL)
    out, _ = sender.communicate(timeout=120)
    acknowledged = storescu_outcomes(out)["Success"]
    assert 30 <= acknowledged < n, f"the kill missed the association ({acknowledged} of {n})"
    wait_for(lambda: not any(alive(pid) for pid in pids), 10, "SCP workers gone with it")

    start_receiver(p, "RTK")
    assert send_all(p, "RTK", files) == 1
    arrivals = Arrivals(p)
    arrivals.wait("RTK", n)
    arrivals.assert_exactly_once("RTK", n)
    # what was acknowledged before the kill was kept: the resend finds it already spooled
    dropped = p.metric("receiver-RTK", "smartbox_duplicate_instances_total", trust="RTK")
    assert dropped >= acknowledged
    assert p.metric("receiver-RTK", "smartbox_instances_received_total", trust="RTK") == n - dropped


def test_sigkill_mid_relay_repeats_the_step(pipeline: Pipeline, tmp_path: Path) -> None:
    p, n = pipeline, 400
    declare_topology(p)
    # the receiver reaches S3 through a gate held while the study arrives: its uploads (made
    # while receiving) are then all still to do when the sender is done, on a machine of any
    # speed, and the kill lands in the middle of them
    host, port = p.s3.endpoint.rsplit(":", 1)
    gate = TcpGate((host, int(port)))
    p.extra_env = {**p.extra_env, "SMARTBOX_S3_ENDPOINT": gate.endpoint}
    try:
        start_receiver(p, "RTK", quiet=2.0)
        files = make_ct_study(410, series=1, per_series=n, rows=512, columns=512).write(tmp_path)
        gate.hold()
        result = p.storescu("RTK", files)
        assert result.returncode == 0, result.stderr
        assert quarantine_instances(p, "RTK") == []
        gate.release()
        wait_for(lambda: quarantine_instances(p, "RTK"), 60, "uploads started", 0.02)
        p.kill("receiver-RTK", signal.SIGKILL)
        at_kill = len(quarantine_instances(p, "RTK"))
        assert 0 < at_kill < n, f"the kill missed the relay ({at_kill} of {n} uploaded)"
        assert Arrivals(p).poll().instances("RTK") == 0

        start_receiver(p, "RTK", quiet=2.0)
        arrivals = Arrivals(p)
        arrivals.wait("RTK", n)
        arrivals.assert_exactly_once("RTK", n)
        assert len(arrivals.messages("RTK")) == 1  # the same batch, resumed
    finally:
        gate.close()


def test_spool_high_water_mark_refuses_with_a700_and_loses_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    p = pipeline
    declare_topology(p)
    start_receiver(p, "RTK", quiet=3.0, extra="spool_high_water_bytes = 3145728\n")  # 3 MiB
    files = make_ct_study(420, series=1, per_series=12, rows=512, columns=512).write(tmp_path)
    first = p.storescu("RTK", files, "-v")
    outcomes = storescu_outcomes(first.stdout + first.stderr)
    assert outcomes["Refused: OutOfResources"] == 1 and outcomes["Success"] == 5, outcomes
    arrivals = Arrivals(p)
    arrivals.wait("RTK", 5)
    arrivals.assert_exactly_once("RTK", 5)  # exactly what was acknowledged, nothing refused

    assert send_all(p, "RTK", files[5:]) >= 2  # refused again until the spool drains
    arrivals.wait("RTK", len(files))
    arrivals.assert_exactly_once("RTK", len(files))
    refused = p.metric("receiver-RTK", "smartbox_cstore_status_total", trust="RTK", status="0xA700")
    assert refused >= 2
    assert p.metric("receiver-RTK", "smartbox_spool_high_water_bytes", trust="RTK") == 3145728


@pytest.fixture(scope="module")
def dedicated_rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DedicatedRabbitMQ]:
    if not rabbitmq_server_available():
        missing(IN_CI_MISSING)
    broker = DedicatedRabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_rabbitmq_down_30s_while_sending(
    dedicated_rabbitmq: DedicatedRabbitMQ, s3_server, dcmtk, tmp_path: Path
) -> None:
    broker = dedicated_rabbitmq
    p = Pipeline(tmp_path / "p", broker.url, f"f{uuid.uuid4().hex[:8]}", s3_server)
    sent = {"RTK": 60, "RGT": 45}
    try:
        declare_topology(p)
        for code in sent:
            start_receiver(p, code)
        broker.stop_app()
        down_at = time.monotonic()
        senders = {
            code: storescu_async(
                p, code, make_ct_study(430 + i, series=3, per_series=n // 3).write(tmp_path / code)
            )
            for i, (code, n) in enumerate(sent.items())
        }
        for code, sender in senders.items():
            out, _ = sender.communicate(timeout=300)
            assert storescu_outcomes(out) == {"Success": sent[code]}, out[-2000:]
        for code, n in sent.items():
            name = f"receiver-{code}"
            wait_for(
                lambda c=code, nm=name: p.metric(nm, "smartbox_relay_retries_total", trust=c) > 0,
                60,
                f"{code} relay retrying",
            )
            wait_for(
                lambda c=code, nm=name, k=n: p.metric(nm, "smartbox_spool_files", trust=c) == k,
                10,
                f"{code}: every instance held in the spool",
            )
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        broker.start_app()

        arrivals = Arrivals(p)
        for code, n in sent.items():
            arrivals.wait(code, n, timeout=180)
            arrivals.assert_exactly_once(code, n)
            wait_for(
                lambda c=code: p.metric(f"receiver-{c}", "smartbox_spool_files", trust=c) == 0,
                30,
                f"{code} spool emptied",
            )
    finally:
        p.stop_all()


def test_s3_down_while_sending(rabbitmq_url: str, namespace: str, dcmtk, tmp_path: Path) -> None:
    s3 = PrivateS3(tmp_path / "s3")
    s3.start()
    p = Pipeline(tmp_path / "p", rabbitmq_url, namespace, s3.server)
    n = 40
    try:
        declare_topology(p)
        start_receiver(p, "RTK")
        s3.stop()
        files = make_ct_study(440, series=2, per_series=n // 2, rows=256, columns=256).write(
            tmp_path / "send"
        )
        result = p.storescu("RTK", files, "-v")
        assert storescu_outcomes(result.stdout + result.stderr) == {"Success": n}
        wait_for(
            lambda: p.metric("receiver-RTK", "smartbox_relay_retries_total", trust="RTK") > 0,
            60,
            "relay retrying",
        )
        wait_for(
            lambda: p.metric("receiver-RTK", "smartbox_spool_files", trust="RTK") == n,
            10,
            "every instance held in the spool",
        )
        s3.start()
        arrivals = Arrivals(p)
        arrivals.wait("RTK", n, timeout=180)
        arrivals.assert_exactly_once("RTK", n)
        assert len(quarantine_instances(p, "RTK")) == n
    finally:
        p.stop_all()
        s3.stop()
