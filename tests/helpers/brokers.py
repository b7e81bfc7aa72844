"""Servers a fault test may break: a throwaway RabbitMQ node and a private SeaweedFS.

The shared RabbitMQ on 127.0.0.1:5672 and the session S3 server serve everyone's tests at the
same time, so a test that needs an outage gets its own: ``DedicatedRabbitMQ`` runs
``rabbitmq-server`` as a separate node (own name, ports, Erlang cookie, data and log
directories; no plugins, or ``rabbitmq_prometheus`` on a port of its own with
``prometheus=True``), stopped and started with ``rabbitmqctl -n NODE stop_app/start_app``;
``RabbitCluster`` joins three such nodes (one shared cookie) into a cluster whose nodes a test
may SIGKILL. ``PrivateS3`` runs ``weed mini`` on fixed ports and data directory so that it can
be stopped and started again with its data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pika

from .services import WEED_PORT_FLAGS, S3Server, pick_port_block, weed_mini_command

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


@dataclass
class DedicatedRabbitMQ:
    """One RabbitMQ node of our own (Debian's rabbitmq-server, run as the current user)."""

    directory: Path
    node: str = field(default_factory=lambda: f"sbtest-{uuid.uuid4().hex[:8]}@localhost")
    process: subprocess.Popen[bytes] | None = None
    #: serve rabbitmq_prometheus's /metrics and /metrics/per-object on ``prometheus_port``
    prometheus: bool = False
    #: where the Erlang cookie lives (``$HOME/.erlang.cookie``); the nodes of a cluster share one
    home: Path | None = None

    def __post_init__(self) -> None:
        self.port, self.dist_port, self.prometheus_port = pick_port_block(3)
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.home is None:
            self.home = self.directory / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
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
        self.launch()
        self.await_startup(timeout)

    def launch(self) -> None:
        """Start ``rabbitmq-server`` without waiting (several nodes boot in parallel)."""
        with open(self.directory / "server.log", "ab") as out:
            self.process = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")],
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )

    def await_startup(self, timeout: float = 120) -> None:
        # ``rabbitmqctl wait`` waits for the pid file the VM writes, then for the broker app
        pid_file = str(self.directory / "rabbitmq.pid")
        result = self.ctl("wait", pid_file, "--timeout", str(int(timeout)), timeout=timeout + 10)
        if result.returncode != 0:
            raise RuntimeError(f"{self.node} did not start: {result.stderr[-500:]}")
        self.wait_amqp(timeout)

    def beam_pid(self) -> int:
        """The Erlang VM's process id (``rabbitmq-server`` is a shell script around it)."""
        return int((self.directory / "rabbitmq.pid").read_text().strip())

    def sigkill(self) -> None:
        """The crash: SIGKILL the node's VM, no goodbye to clients or peers."""
        pid = self.beam_pid()
        os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(30)  # the wrapper script exits with its VM
            self.process = None

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


@dataclass
class RabbitCluster:
    """Three RabbitMQ nodes on loopback joined into one cluster: distinct node names
    (``smartbox-cN-<tag>@localhost``), AMQP and distribution ports, data, log and config
    files; one Erlang cookie, private to the cluster (the system node's is never read).
    Nodes 2 and 3 join node 1 with ``rabbitmqctl join_cluster``."""

    directory: Path
    size: int = 3
    nodes: list[DedicatedRabbitMQ] = field(default_factory=list)
    vm_pids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        home = self.directory / "home"
        self.nodes = [
            DedicatedRabbitMQ(
                self.directory / f"c{i}", node=f"smartbox-c{i}-{tag}@localhost", home=home
            )
            for i in range(1, self.size + 1)
        ]

    def start(self, timeout: float = 120) -> None:
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.await_startup(timeout)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            for args in (("stop_app",), ("join_cluster", first.node), ("start_app",)):
                result = node.ctl(*args)
                if result.returncode != 0:
                    raise RuntimeError(f"{node.node} {args[0]}: {result.stderr[-500:]}")
            node.wait_amqp(timeout)
        #: every Erlang VM this cluster started (a fixture checks none outlives ``stop``)
        self.vm_pids = [n.beam_pid() for n in self.nodes]
        running = self.running_nodes(first)
        if sorted(running) != sorted(n.node for n in self.nodes):
            raise RuntimeError(f"cluster did not form: {running}")

    def running_nodes(self, via: DedicatedRabbitMQ) -> list[str]:
        result = via.ctl("cluster_status", "--formatter", "json")
        if result.returncode != 0:
            raise RuntimeError(f"cluster_status: {result.stderr[-500:]}")
        return list(json.loads(result.stdout)["running_nodes"])

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def alive(self) -> list[DedicatedRabbitMQ]:
        return [n for n in self.nodes if n.process is not None]

    def connections(self) -> dict[str, list[str]]:
        """node -> the client-given names of the AMQP connections open on it (the whole
        cluster's list, asked of a running node; a connection's Erlang pid names its node)."""
        result = self.alive()[0].ctl("list_connections", "--silent", "pid", "client_properties")
        if result.returncode != 0:
            raise RuntimeError(f"list_connections: {result.stderr[-500:]}")
        out: dict[str, list[str]] = {n.node: [] for n in self.alive()}
        for line in result.stdout.splitlines():
            node = re.match(r"<([^@<>]+@[^.>]+)", line.strip())
            name = re.search(r'\{"connection_name","([^"]*)"\}', line)
            if node and name:
                out.setdefault(node.group(1), []).append(name.group(1))
        return out

    def members(self, queue: str) -> list[str]:
        """The nodes holding a replica of a quorum queue (from a running node)."""
        result = self.alive()[0].ctl("list_queues", "--silent", "name", "members")
        for line in result.stdout.splitlines():
            name, _, rest = line.partition("\t")
            if name == queue:
                return re.findall(r"[\w.-]+@[\w.-]+", rest)
        raise KeyError(queue)

    def depth(self, queue: str) -> int:
        """Messages of a queue ready or delivered and not yet acknowledged."""
        result = self.alive()[0].ctl(
            "list_queues", "--silent", "name", "messages_ready", "messages_unacknowledged"
        )
        for line in result.stdout.splitlines():
            name, *counts = line.split("\t")
            if name == queue:
                return sum(int(c) for c in counts)
        raise KeyError(queue)

    def leader(self, queue: str) -> str:
        result = self.alive()[0].ctl("list_queues", "--silent", "name", "leader")
        for line in result.stdout.splitlines():
            name, _, rest = line.partition("\t")
            if name == queue:
                return rest.strip()
        raise KeyError(queue)

    def stop(self) -> None:
        """Stop every node still running (SIGTERM to each VM at once: a clean shutdown; SIGKILL
        for any still there after 30 s) and remove the cluster's directories."""
        running = [n for n in self.nodes if n.process is not None]
        for node in running:
            try:
                os.kill(node.beam_pid(), signal.SIGTERM)
            except (OSError, ValueError):
                pass  # no VM (it never wrote its pid file): the wrapper is all there is
        deadline = time.monotonic() + 30
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
            if _vm_alive(node):
                os.kill(node.beam_pid(), signal.SIGKILL)
            node.process.wait(10)
            node.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _vm_alive(node: DedicatedRabbitMQ) -> bool:
    try:
        pid = node.beam_pid()
    except (OSError, ValueError):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


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
        cmd = weed_mini_command(self.weed, self.directory, self.flags)
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
