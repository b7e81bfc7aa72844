"""SCP worker processes: several of our storage SCPs (``StoreSCP`` on our own upper layer,
``ul.py``) accepting from one listening socket.

Receiving costs about a millisecond of CPU per 0.5 MB instance (negotiation more, per
association) and Python holds the GIL while it works, so one process cannot use more than one
core. The receiver therefore pre-forks: the parent makes the listening socket, starts
``workers`` processes (``python -m producers.receiver.worker``) that each run a ``StoreSCP`` on
it, and keeps the relay, the metrics endpoint and the supervision for itself. All of them
share the spool and its ledger.

Each worker gets its settings (trust, spool directory, the regional key) over a private
socket pair, never through argv or the environment, and sends back its counters every
quarter second; the parent adds the differences to its own metrics, so ``/metrics`` shows one
receiver. A worker that dies is restarted. A worker whose parent dies (even by SIGKILL) sees
its control socket close and exits at once: an instance is only ever acknowledged by a
process whose receiver is alive.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

from prometheus_client import Counter

from smartbox import metrics
from smartbox.keys import RegionalKey
from smartbox.trusts import TrustConfig

log = logging.getLogger(__name__)

#: counters a worker increments; forwarded to the parent by position in this list
FORWARDED: list[Counter] = [
    metrics.ASSOCIATIONS,
    metrics.INSTANCES_RECEIVED,
    metrics.BYTES_RECEIVED,
    metrics.CSTORE_STATUS,
    metrics.DUPLICATES,
    metrics.FAILURES,
    metrics.PROBE_INSTANCES_RECEIVED,  # appended: positions are the protocol
    metrics.PACED_SECONDS,
]
Snapshot = dict[tuple[int, tuple[tuple[str, str], ...]], float]


@dataclass(frozen=True)
class WorkerSettings:
    """What one worker process needs (sent pickled over its control socket)."""

    trust: TrustConfig
    spool_root: Path
    key: RegionalKey
    index: int
    log_level: str


def counter_snapshot() -> Snapshot:
    """Current values of the forwarded counters in this process."""
    out: Snapshot = {}
    for i, counter in enumerate(FORWARDED):
        for family in counter.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[(i, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def default_workers(trusts_on_host: int = 1, cpus: int | None = None) -> int:
    """SCP worker processes of a receiver whose trust file does not set ``workers``: the
    host's CPUs shared among the trusts whose files are here, at most 4 each, and 0 (the SCP
    on threads of the receiver process) when there are more trusts than CPUs.

    Every worker is a process of its own (~60 MiB RSS, measured by
    ``bench/receiver/bench_memory.py``) beside the receiver's (~80 MiB): one per CPU per
    trust gave 13 trusts on 4 cores 65 processes; many trusts on few cores gain nothing from
    more SCP processes than cores, while one trust alone on a host keeps a process per core.
    """
    cpus = cpus or os.cpu_count() or 1
    return min(4, cpus // max(1, trusts_on_host))


def trusts_on_host(trust: TrustConfig) -> int:
    """How many trust files sit beside this one (``SMARTBOX_TRUSTS_DIR``): the receivers
    this host runs, for ``default_workers``."""
    try:
        return max(1, sum(1 for _ in trust.source_file.parent.glob("*.toml")))
    except OSError:
        return 1


class _Worker:
    def __init__(self, index: int, popen: subprocess.Popen[bytes], conn: Connection) -> None:
        self.index = index
        self.popen = popen
        self.conn = conn
        self.seen: Snapshot = {}
        self.ready = threading.Event()


class WorkerPool:
    """Starts, feeds, supervises and stops the SCP worker processes of one trust."""

    def __init__(
        self,
        trust: TrustConfig,
        spool_root: Path,
        key: RegionalKey,
        listen_socket: socket.socket,
        count: int,
    ) -> None:
        self.trust = trust
        self.spool_root = spool_root
        self.key = key
        self.listen_socket = listen_socket
        self.count = count
        self.restarts = 0
        self._workers: dict[int, _Worker] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the workers, and every send to them
        self._thread: threading.Thread | None = None
        self.pace = 0.0  # s per C-STORE response (``set_pace``)

    def start(self, timeout: float = 60.0) -> None:
        """Start every worker and wait until each one is accepting."""
        for i in range(self.count):
            self._spawn(i)
        # spawned from this (long-lived) thread; supervised from another
        self._thread = threading.Thread(
            target=self._supervise, name=f"workers-{self.trust.code}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        for w in list(self._workers.values()):
            if not w.ready.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"{self.trust.code}: SCP worker {w.index} did not start")

    def _spawn(self, index: int) -> None:
        parent_end, child_end = socket.socketpair()
        cmd = [
            sys.executable,
            "-m",
            "producers.receiver.worker",
            str(child_end.fileno()),
            str(self.listen_socket.fileno()),
        ]
        popen = subprocess.Popen(
            cmd, pass_fds=(child_end.fileno(), self.listen_socket.fileno()), close_fds=True
        )
        child_end.close()
        conn = Connection(parent_end.detach())
        settings = WorkerSettings(
            self.trust,
            self.spool_root,
            self.key,
            index,
            logging.getLevelName(logging.getLogger().level),
        )
        conn.send(settings)
        with self._lock:
            if self.pace:  # a restarted worker paces as the others do
                conn.send(("pace", self.pace))
            self._workers[index] = _Worker(index, popen, conn)

    def set_pace(self, pace: float) -> None:
        """Tell every worker how long to hold back each C-STORE response (``pace.py``)."""
        with self._lock:
            self.pace = pace
            for w in self._workers.values():
                try:
                    w.conn.send(("pace", pace))
                except OSError:
                    pass  # gone: the supervisor restarts it, with this pace

    def alive(self) -> bool:
        with self._lock:
            workers = list(self._workers.values())
        return len(workers) == self.count and all(w.popen.poll() is None for w in workers)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.popen.pid for w in self._workers.values()]

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                by_conn = {w.conn: w for w in self._workers.values()}
            for ready in wait(list(by_conn), timeout=0.5):
                conn = cast(Connection, ready)
                worker = by_conn[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    self._worker_gone(worker)
                    continue
                self._apply(worker, message)

    def _apply(self, worker: _Worker, message: Any) -> None:
        kind, payload = message
        if kind == "ready":
            worker.ready.set()
        elif kind == "counters":
            apply_counters(worker.seen, payload)

    def _worker_gone(self, worker: _Worker) -> None:
        worker.conn.close()
        try:
            rc = worker.popen.wait(5)
        except subprocess.TimeoutExpired:
            worker.popen.kill()
            rc = worker.popen.wait(5)
        with self._lock:
            self._workers.pop(worker.index, None)
        if self._stopping.is_set():
            return
        self.restarts += 1
        metrics.FAILURES.labels(self.trust.code, "receive", "worker_exit").inc()
        log.error("%s: SCP worker %d exited (%s); restarting", self.trust.code, worker.index, rc)
        time.sleep(min(5.0, 0.2 * self.restarts))
        self._spawn(worker.index)

    def stop(self, timeout: float = 20.0) -> None:
        """Ask every worker to finish its associations and exit; kill the ones that do not."""
        self._stopping.set()
        if self._thread:
            self._thread.join(5)
        with self._lock:
            workers = list(self._workers.values())
            for w in workers:
                try:
                    w.conn.send(("stop", timeout))
                except OSError:
                    pass
        deadline = time.monotonic() + timeout + 5
        for w in workers:
            self._drain(w, deadline)
            try:
                w.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s: SCP worker %d did not stop; killing", self.trust.code, w.index)
                w.popen.kill()
                w.popen.wait(5)
            w.conn.close()
        with self._lock:
            self._workers.clear()

    def _drain(self, worker: _Worker, deadline: float) -> None:
        """Take the worker's last counters until it closes its end."""
        while time.monotonic() < deadline:
            try:
                if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                    return
                self._apply(worker, worker.conn.recv())
            except (EOFError, OSError):
                return


def apply_counters(seen: Snapshot, snapshot: Snapshot) -> None:
    """Add to this process's counters what a worker counted since its last snapshot."""
    for key, value in snapshot.items():
        delta = value - seen.get(key, 0.0)
        if delta > 0:
            index, labels = key
            FORWARDED[index].labels(**dict(labels)).inc(delta)
        seen[key] = value


def counters_changed(last: Snapshot, now: Snapshot) -> bool:
    return now != last


def close_all(conns: Iterable[Connection]) -> None:
    for c in conns:
        try:
            c.close()
        except OSError:
            pass
