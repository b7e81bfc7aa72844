"""Starting real servers for tests: SeaweedFS ``weed mini`` as the S3 server."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from minio import Minio

WEED_PORT_FLAGS = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
    "debug.port",
    "s3.debug.port",
    "metricsPort",  # Prometheus metrics of every part (the benchmarks count S3 requests there)
]


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    log: Path
    metrics: str = ""  # host:port of weed's Prometheus metrics ("" if not exposed)

    def client(self) -> Minio:
        return Minio(
            self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False
        )

    def env(self) -> dict[str, str]:
        return {
            "SMARTBOX_S3_ENDPOINT": self.endpoint,
            "SMARTBOX_S3_ACCESS_KEY": self.access_key,
            "SMARTBOX_S3_SECRET_KEY": self.secret_key,
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


#: below Linux's ephemeral range (32768-60999 by default), so that the outgoing connections of
#: other tests cannot take a port of the block between our check and weed's bind
PORT_RANGE = (20000, 32700)


def pick_port_block(count: int) -> list[int]:
    """``count`` consecutive free ports (weed adds its own offsets, so give every one)."""
    for _ in range(200):
        base = random.randrange(PORT_RANGE[0], PORT_RANGE[1] - count)
        ports = list(range(base, base + count))
        if _ports_free(ports):
            return ports
    raise RuntimeError("no free port block")


def weed_mini_command(weed: str, directory: Path, flags: dict[str, int]) -> list[str]:
    """``weed mini`` on loopback with every port given (``flags``: port flag -> port)."""
    return [
        weed,
        "mini",
        f"-dir={directory}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        # every bucket is a collection with volumes of its own, and weed sizes its volume count
        # as free disk / volume size (1 GiB here): a suite creating hundreds of buckets ran out
        # ("no free volumes left") on a fuller disk. Small sparse volumes, a fixed high count.
        "-master.volumeSizeLimitMB=64",
        "-volume.max=2000",
        *[f"-{flag}={port}" for flag, port in flags.items()],
    ]


def start_s3_server(weed: str, directory: Path, timeout: float = 60.0) -> S3Server:
    """A ``weed mini`` on a fresh block of ports; tried again on other ports if one of the
    block was taken by the time weed bound it (weed then exits at once)."""
    for attempt in range(3):
        try:
            return _start_s3_server(weed, directory / f"try{attempt}", timeout)
        except PortTaken:
            continue
    raise RuntimeError(f"weed mini could not bind its ports in 3 tries; see {directory}")


class PortTaken(RuntimeError):
    """weed mini exited during start-up: one of its ports was taken after we picked it."""


def _start_s3_server(weed: str, directory: Path, timeout: float) -> S3Server:
    directory.mkdir(parents=True, exist_ok=True)
    access, secret = "smartboxtest", uuid.uuid4().hex
    ports = pick_port_block(len(WEED_PORT_FLAGS))
    flags = dict(zip(WEED_PORT_FLAGS, ports, strict=True))
    log = directory / "weed.log"
    cmd = weed_mini_command(weed, directory, flags)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=directory)
    server = S3Server(
        f"127.0.0.1:{flags['s3.port']}",
        access,
        secret,
        proc,
        log,
        metrics=f"127.0.0.1:{flags['metricsPort']}",
    )
    deadline = time.monotonic() + timeout
    client = server.client()
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")
            if "not available" in text or "address already in use" in text.lower():
                raise PortTaken(f"weed mini exited ({proc.returncode}); see {log}")
            raise RuntimeError(f"weed mini exited ({proc.returncode}); see {log}")
        try:
            client.list_buckets()
            bucket = f"ready-{uuid.uuid4().hex[:8]}"
            client.make_bucket(bucket)
            client.remove_bucket(bucket)
            return server
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"weed mini did not answer S3 within {timeout:.0f}s; see {log}")
