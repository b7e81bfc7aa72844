"""Accepting associations from a listening socket that several SCP worker processes share
(pre-fork): every worker's selector wakes for a new connection and one wins ``accept``.

A TCP connection is *pending* until its A-ASSOCIATE-RQ has been accepted, and only then
*established*. Only established associations count toward ``max_associations``, so sockets
that connect and say nothing (or trickle bytes) cannot lock the trust's PACS out. Pending
ones have caps of their own, per process: ``max_pending_per_address`` from one source address
(a new connection beyond it is closed at once), and ``max_pending`` in all (the oldest pending
one is closed to make room: a real PACS sends its A-ASSOCIATE-RQ within milliseconds of
connecting, so the newest connection is the likeliest to be one). ARTIM closes the rest.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable

from .ul import Association, Closed, Limits, Service

log = logging.getLogger(__name__)
ACCEPT_DELAY = 0.002  # per association in progress here: let less busy workers accept first


class Listener:
    """Accepts associations from a listening socket that other processes may share
    (implements ``ul.Connections`` for the associations it starts)."""

    def __init__(
        self,
        listen: socket.socket,
        service: Service,
        *,
        limits: Limits,
        tls: ssl.SSLContext | None = None,
        tls_failed: Callable[[str, OSError], None] = lambda _a, _e: None,
    ) -> None:
        self.listen = listen
        self.service = service
        self.limits = limits
        self.tls = tls
        self.tls_failed = tls_failed
        self._pending: dict[Association, None] = {}  # insertion order: oldest first
        self._per_address: Counter[str] = Counter()
        self._established: set[Association] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, name: str) -> None:
        self.listen.setblocking(False)  # several processes accept: losing the race is normal
        self._thread = threading.Thread(target=self._accept_loop, name=name, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listen, selectors.EVENT_READ)
        with selector:
            while not self._stop.is_set():
                if not selector.select(0.5):
                    continue
                busy = self.established()
                if busy:
                    time.sleep(min(ACCEPT_DELAY * busy, 0.02))
                try:
                    sock, address = self.listen.accept()
                except (BlockingIOError, InterruptedError):
                    continue  # another worker process took it
                except OSError as exc:
                    if self._stop.is_set():
                        return
                    log.warning("accept failed: %s", exc)
                    time.sleep(0.1)
                    continue
                self._admit(sock, str(address[0]))

    def _admit(self, sock: socket.socket, address: str) -> None:
        with self._lock:
            if self._per_address[address] >= self.limits.max_pending_per_address:
                refused = True
            else:
                refused = False
                if len(self._pending) >= self.limits.max_pending:
                    self._evict_oldest()
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                assoc = Association(sock, address, self.service, self)
                self._pending[assoc] = None
                self._per_address[address] += 1
        if refused:
            sock.close()
            self.service.rejected("pending_per_address")
            log.warning("connection from %s closed: too many not yet associated", address)
            return
        assoc.start()

    def _evict_oldest(self) -> None:
        """Close the oldest pending connection (lock held; it is still running, so its
        socket is still open)."""
        oldest = next(iter(self._pending))
        self._forget_pending(oldest)
        oldest.close_transport()
        self.service.rejected("pending_limit")
        log.warning("connection from %s closed: too many not yet associated", oldest.address)

    def _forget_pending(self, assoc: Association) -> bool:
        if self._pending.pop(assoc, False) is False:
            return False
        self._per_address[assoc.address] -= 1
        if not self._per_address[assoc.address]:
            del self._per_address[assoc.address]
        return True

    def establish(self, assoc: Association) -> bool:
        """See ``ul.Connections.establish``."""
        with self._lock:
            if assoc not in self._pending:
                raise Closed  # evicted meanwhile
            if len(self._established) >= self.limits.max_associations:
                return False
            self._forget_pending(assoc)
            self._established.add(assoc)
            return True

    def active(self) -> int:
        """Connections in progress: pending and established."""
        with self._lock:
            return len(self._pending) + len(self._established)

    def established(self) -> int:
        with self._lock:
            return len(self._established)

    def finished(self, assoc: Association) -> None:
        with self._lock:
            self._forget_pending(assoc)
            self._established.discard(assoc)

    def stop_accepting(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def drain(self, seconds: float) -> None:
        """Wait for associations in progress to end; abort those still running after that."""
        deadline = time.monotonic() + seconds
        while self.active() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            remaining = [*self._pending, *self._established]
        for assoc in remaining:
            assoc.abort()
        for assoc in remaining:
            assoc.join(5)
