"""The receivers a benchmark sends to: dcmtk storescp, Orthanc, smartbox. Each run gets a fresh
instance (empty storage), started before the clock and stopped after it."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AET = "BENCH_SCP"
NODELAY = dict(os.environ, TCP_NODELAY="1")  # Debian's dcmtk and Orthanc otherwise wait on Nagle

SMARTBOX = """
import signal, sys, threading
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from producers.receiver import ReceiverService
from smartbox.bus import MemoryBus
from smartbox.trusts import TrustConfig
from smartbox.keys import RegionalKey
from smartbox.store import LocalStore
root, port, workers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
uploads = sys.argv[5] == "upload"
trust = TrustConfig(code="BENCH", name="bench", ae_title="BENCH_SCP", port=port,
                    allowed_callers=("*",), source_file=Path("bench"), bind_host="127.0.0.1")
stop, released = threading.Event(), threading.Event()

class HeldStore(LocalStore):
    # storescp and Orthanc upload nothing: unless told to, the relay's uploads to quarantine
    # (a second durable copy of every instance, here on the same disk) wait until the end
    def put_file(self, bucket, key, path, **kwargs):
        if not uploads:
            released.wait()
        super().put_file(bucket, key, path, **kwargs)

def on_term(*_):
    released.set()
    stop.set()

signal.signal(signal.SIGTERM, on_term)
service = ReceiverService(trust, spool_dir=root / "spool", store=HeldStore(root / "objects"),
                          bus=MemoryBus(), key=RegionalKey(b"bench-" + b"k" * 32),
                          workers=workers)
service.start(stop)
print("ready", flush=True)
stop.wait()
service.stop(grace_seconds=5)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


class Target:
    name = "?"

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def stored(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Storescp(Target):
    """dcmtk storescp, one process per association (--fork); writes files, no fsync."""

    name = "dcmtk storescp"

    def start(self) -> Storescp:
        (self.dir / "out").mkdir()
        cmd = ["/usr/bin/storescp", "--fork", "-aet", AET, "-od", str(self.dir / "out")]
        self.proc = subprocess.Popen(
            [*cmd, str(self.port)],
            env=NODELAY,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)
        return self

    def stored(self) -> int:
        return sum(1 for _ in (self.dir / "out").iterdir())


class Orthanc(Target):
    """Orthanc (Debian package) with its defaults: SQLite index, SyncStorageArea (fsync)."""

    name = "Orthanc"

    def start(self) -> Orthanc:
        self.http = free_port()
        config = {
            "Name": "bench",
            "DicomAet": AET,
            "DicomPort": self.port,
            "HttpPort": self.http,
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
        }
        (self.dir / "orthanc.json").write_text(json.dumps(config))
        log = open(self.dir / "orthanc.log", "wb")  # noqa: SIM115 - lives as long as Orthanc
        self.proc = subprocess.Popen(
            ["/usr/sbin/Orthanc", str(self.dir / "orthanc.json")],
            env=NODELAY,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc)
        wait_port(self.http, self.proc)
        return self

    def stored(self) -> int:
        url = f"http://127.0.0.1:{self.http}/statistics"
        with urllib.request.urlopen(url, timeout=30) as r:
            return int(json.loads(r.read())["CountInstances"])


class Smartbox(Target):
    """Our receiver (ReceiverService: SCP worker processes, fsync'd spool + SQLite ledger,
    relay running on the in-process bus and a local-directory object store). The relay
    uploads each instance to quarantine as soon as it is durable; with ``uploads`` False
    (the default) those uploads wait until the run is over, as the other receivers upload
    nothing (``bench_pipeline`` measures intake with real S3 uploads)."""

    name = "smartbox"

    def __init__(self, workdir: Path, workers: int, uploads: bool = False) -> None:
        super().__init__(workdir)
        self.workers = workers
        self.uploads = uploads  # False: the relay's uploads wait until the run is over

    def start(self) -> Smartbox:
        cmd = [sys.executable, "-c", SMARTBOX, str(self.dir), str(self.port), str(self.workers)]
        log = open(self.dir / "receiver.log", "wb")  # noqa: SIM115
        mode = "upload" if self.uploads else "hold"
        self.proc = subprocess.Popen(
            [*cmd, str(ROOT), mode], stdout=subprocess.PIPE, stderr=log, text=True
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"smartbox did not start; see {self.dir}/receiver.log")
        return self

    def stored(self) -> int:
        db = sqlite3.connect(f"file:{self.dir}/spool/BENCH/ledger.sqlite3?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
        finally:
            db.close()
