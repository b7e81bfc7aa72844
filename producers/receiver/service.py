"""A trust's receiver process: SCP (in worker processes) + spool + relay, wired to a bus and an
object store.

Start-up order matters for "never lose an image": the spool is recovered first (half-received
files and unacknowledged orphans removed, pending work kept), then the listening socket is
opened and the SCP workers start, then the relay resumes whatever the ledger still holds.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

from smartbox import metrics
from smartbox.bus import Bus
from smartbox.errors import ConfigError
from smartbox.keys import RegionalKey
from smartbox.store import ObjectStore
from smartbox.trusts import TrustConfig

from .relay import Relay
from .scp import StoreSCP
from .spool import Spool
from .workers import WorkerPool, default_workers, trusts_on_host

log = logging.getLogger(__name__)
BACKLOG = 128


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    family, kind, proto, _name, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class ReceiverService:
    """Owns one trust's SCP, spool and relay. ``start`` returns the bound (host, port).

    ``workers``: SCP processes sharing the port (default: the trust file's ``workers``, else
    ``default_workers``: the CPUs shared among the trusts of this host, up to 4); 0 runs the
    SCP on threads of this process.
    """

    def __init__(
        self,
        trust: TrustConfig,
        *,
        spool_dir: Path,
        store: ObjectStore,
        bus: Bus,
        key: RegionalKey,
        quarantine_bucket: str = "quarantine",
        poll_seconds: float = 0.5,
        workers: int | None = None,
    ) -> None:
        self.trust = trust
        self.key = key
        self.spool = Spool(spool_dir / trust.code)
        if workers is None:
            if trust.workers is not None:
                workers = trust.workers
            else:
                workers = default_workers(trusts_on_host(trust))
        self.workers = workers
        self.relay = Relay(
            trust, self.spool, store, bus, quarantine_bucket, poll_seconds=poll_seconds
        )
        self.store = store
        self.bucket = quarantine_bucket
        self.scp: StoreSCP | None = None
        self.pool: WorkerPool | None = None
        self.address: tuple[str, int] | None = None
        self._socket: socket.socket | None = None

    def start(self, stop: threading.Event) -> tuple[str, int]:
        code = self.trust.code
        removed, adopted, lost = self.spool.recover()
        if lost:
            metrics.FAILURES.labels(code, "receive", "spool_file_lost").inc(lost)
        if removed or adopted or lost:
            log.warning(
                "%s: spool recovery: %d stray files removed, %d adopted, %d rows lost",
                code,
                removed,
                adopted,
                lost,
            )
        metrics.SPOOL_HIGH_WATER.labels(code).set(self.trust.spool_high_water_bytes)
        self.relay.update_gauges()
        try:
            self._socket = listen_socket(self.trust.bind_host, self.trust.port)
        except OSError as exc:  # in use, or a bind_host this machine does not have
            raise ConfigError(
                f"trust {code}: cannot listen on {self.trust.bind_host}:{self.trust.port} "
                f"({exc.strerror}): another process holds it (is this receiver already "
                f"running?), or change 'port' or 'bind_host' in {self.trust.source_file}"
            ) from None
        host, port = self._socket.getsockname()[:2]
        self.address = (str(host), int(port))
        if self.workers == 0:
            intake_spool = Spool(self.spool.root, durable_commits=False)
            self.scp = StoreSCP(self.trust, intake_spool, self.key)
            self.scp.start(self._socket)
        else:
            self.pool = WorkerPool(
                self.trust, self.spool.root, self.key, self._socket, self.workers
            )
            self.pool.start()
        self.relay.on_pace = self._set_pace
        self.relay.start(stop)
        log.info(
            "receiver %s (%s) listening on %s:%d as AE %s (%s)",
            code,
            self.trust.name,
            host,
            port,
            self.trust.ae_title,
            f"{self.workers} SCP processes" if self.workers else "in-process SCP",
        )
        return self.address

    def _set_pace(self, pace: float) -> None:
        """Intake pacing (``pace.py``): the relay's new hold-back per C-STORE response."""
        if self.pool is not None:
            self.pool.set_pace(pace)
        elif self.scp is not None:
            self.scp.pace = pace

    def scp_alive(self) -> bool:
        """For /readyz: the SCP is accepting (every worker process is running)."""
        if self.pool is not None:
            return self.pool.alive()
        return self.scp is not None and self.scp.server is not None

    def stop(self, grace_seconds: float = 20.0) -> None:
        """Stop accepting, let associations in progress finish (up to ``grace_seconds``)."""
        if self.pool is not None:
            self.pool.stop(grace_seconds)
        if self.scp is not None:
            self.scp.stop(grace_seconds)
            self.scp.spool.close()
        if self._socket is not None:
            self._socket.close()
        self.relay.join(timeout=10)
        self.spool.close()
