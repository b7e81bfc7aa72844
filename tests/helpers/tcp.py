"""TCP relays for tests: the accept loop they share, and a relay whose forwarding can be held.

``TcpGate`` is a server that stops answering, then resumes.
Put in front of the S3 server for one process (its ``SMARTBOX_S3_ENDPOINT``): while held, the
bytes its clients send are not forwarded, so its requests stall where they are (no error
until the client's own timeout) and go on when released. Used to keep a receiver's uploads
behind its intake whatever the machine's speed.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from .pipeline import free_port


def serve_pairs(
    server: socket.socket,
    stop: threading.Event,
    target: tuple[str, int],
    handle: Callable[[socket.socket, socket.socket], None],
) -> None:
    """Accept on ``server`` until ``stop``; connect each client to ``target`` and hand the
    pair (client, upstream), both blocking, to ``handle``. A refused upstream closes the
    client."""
    server.settimeout(0.2)
    while not stop.is_set():
        try:
            client, _ = server.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            client.close()
            continue
        for sock in (client, upstream):
            sock.settimeout(None)
        handle(client, upstream)


def close_both(src: socket.socket, dst: socket.socket) -> None:
    """Shut both directions of a relayed pair down and close ``src`` (its pipe's end)."""
    for sock in (src, dst):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    src.close()


class TcpGate:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._open = threading.Event()
        self._open.set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def _accept(self) -> None:
        serve_pairs(self._server, self._stop, self.target, self._start_pipes)

    def _start_pipes(self, client: socket.socket, upstream: socket.socket) -> None:
        threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
        threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, gated: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if gated:
                    self._open.wait()
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            close_both(src, dst)

    def close(self) -> None:
        self._stop.set()
        self._open.set()
        self._server.close()
