"""Accepting associations from a listening socket that several SCP worker processes share
(pre-fork): every worker's selector wakes for a new connection and one wins ``accept``."""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable

from .ul import Association, Service

log = logging.getLogger(__name__)
ACCEPT_DELAY = 0.002  # per association in progress here: let less busy workers accept first


class Listener:
    """Accepts associations from a listening socket that other processes may share."""

    def __init__(
        self,
        listen: socket.socket,
        service: Service,
        *,
        max_associations: int,
        tls: ssl.SSLContext | None = None,
        tls_failed: Callable[[str, OSError], None] = lambda _a, _e: None,
    ) -> None:
        self.listen = listen
        self.service = service
        self.max_associations = max_associations
        self.tls = tls
        self.tls_failed = tls_failed
        self._active: set[Association] = set()
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
                busy = self.active()
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
                sock.setblocking(True)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                assoc = Association(sock, str(address[0]), self.service, self)
                with self._lock:
                    self._active.add(assoc)
                assoc.start()

    def active(self) -> int:
        with self._lock:
            return len(self._active)

    def finished(self, assoc: Association) -> None:
        with self._lock:
            self._active.discard(assoc)

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
            remaining = list(self._active)
        for assoc in remaining:
            assoc.abort()
        for assoc in remaining:
            assoc.join(5)
