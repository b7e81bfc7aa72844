"""Servers a fault test may break: a throwaway RabbitMQ node and a private SeaweedFS.

The shared RabbitMQ on 127.0.0.1:5672 and the session S3 server serve everyone's tests at the
same time, so a test that needs an outage gets its own: ``DedicatedRabbitMQ`` runs
``rabbitmq-server`` as a separate node (own name, ports, Erlang cookie, data and log
directories; no plugins, or ``rabbitmq_prometheus`` on a port of its own with
``prometheus=True``), stopped and started with ``rabbitmqctl -n NODE stop_app/start_app``;
``PrivateS3`` runs ``weed mini`` on fixed ports and data directory so that it can be stopped
and started again with its data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pika

from .services import WEED_PORT_FLAGS, S3Server, pick_port_block

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


@dataclass
class DedicatedRabbitMQ:
    """One RabbitMQ node of our own (Debian's rabbitmq-server, run as the current user)."""

    directory: Path
    node: str = field(default_factory=lambda: f"sbtest-{uuid.uuid4().hex[:8]}@localhost")
    process: subprocess.Popen[bytes] | None = None
    #: serve rabbitmq_prometheus's /metrics and /metrics/per-object on ``prometheus_port``
    prometheus: bool = False

    def __post_init__(self) -> None:
        self.port, self.dist_port, self.prometheus_port = pick_port_block(3)
        self.home = self.directory / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        plugins = "rabbitmq_prometheus" if self.prometheus else ""
        (self.directory / "enabled_plugins").write_text(f"[{plugins}].\n")
        conf = f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n"
        conf += "log.console = false\n"
        if self.prometheus:
            conf += f"prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {self.prometheus_port}\n"
        (self.directory / "rabbitmq.conf").write_text(conf)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _env(self) -> dict[str, str]:
        d = self.directory
        return dict(
            os.environ,
            HOME=str(self.home),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
        )

    def ctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, timeout: float = 120) -> None:
        with open(self.directory / "server.log", "ab") as out:
            self.process = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")],
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        self.ctl("await_startup", timeout=timeout)
        self.wait_amqp(timeout)

    def wait_amqp(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited; see {self.directory}/server.log")
            try:
                pika.BlockingConnection(pika.URLParameters(self.url)).close()
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.3)
        raise RuntimeError(f"dedicated RabbitMQ did not accept AMQP within {timeout:.0f}s")

    def stop_app(self) -> None:
        """The outage: the node stays up, the broker (and its port) goes away."""
        result = self.ctl("stop_app")
        if result.returncode != 0:
            raise RuntimeError(f"stop_app failed: {result.stderr}")

    def start_app(self) -> None:
        result = self.ctl("start_app")
        if result.returncode != 0:
            raise RuntimeError(f"start_app failed: {result.stderr}")
        self.wait_amqp()

    def stop(self) -> None:
        if self.process is None:
            return
        self.ctl("stop", timeout=60)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None


def rabbitmq_server_available() -> bool:
    return (RABBIT_BIN / "rabbitmq-server").exists() and shutil.which("erl") is not None


@dataclass
class PrivateS3:
    """``weed mini`` that can be stopped and started again on the same ports and data."""

    directory: Path
    weed: str = field(
        default_factory=lambda: shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    )
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.flags = dict(zip(WEED_PORT_FLAGS, pick_port_block(len(WEED_PORT_FLAGS)), strict=True))
        self.access, self.secret = "smartboxtest", uuid.uuid4().hex
        self.server = S3Server(
            f"127.0.0.1:{self.flags['s3.port']}",
            self.access,
            self.secret,
            None,  # type: ignore[arg-type]
            self.directory / "weed.log",
        )

    def start(self, timeout: float = 90.0) -> None:
        cmd = [
            self.weed,
            "mini",
            f"-dir={self.directory}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            *[f"-{flag}={port}" for flag, port in self.flags.items()],
        ]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.access, AWS_SECRET_ACCESS_KEY=self.secret)
        with open(self.server.log, "ab") as out:
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.directory
            )
        self.server.process = self.process
        client = self.server.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited; see {self.server.log}")
            try:
                client.list_buckets()
                bucket = f"ready-{uuid.uuid4().hex[:8]}"
                client.make_bucket(bucket)
                client.remove_bucket(bucket)
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.3)
        raise RuntimeError(f"weed mini did not answer S3 within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is not None:
            self.server.stop()
            self.process = None
