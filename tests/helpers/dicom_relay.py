"""A counting TCP relay between two DICOM peers: what one side sent, seen on the wire.

Put in front of a receiver (the archive's C-MOVE sub-operations go through it) or in front of
an archive (the cohort process's associations go through it). It counts connections (and the
most open at once) and the DIMSE command sets each direction carried (a command's last
P-DATA fragment), with their times, without decoding anything else.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from .pipeline import free_port
from .tcp import close_both, serve_pairs


@dataclass
class Relay:
    target: tuple[str, int]
    port: int = field(default_factory=free_port)
    connections: int = 0
    open_now: int = 0
    max_open: int = 0
    #: monotonic times of the command sets sent by the connecting side / the listening side
    requests: list[float] = field(default_factory=list)
    responses: list[float] = field(default_factory=list)
    #: seconds to hold each command set the listening side sends (a slow receiver: a move
    #: then takes long enough to be interrupted in the middle)
    response_delay: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        serve_pairs(self._server, self._stop, self.target, self._start_pipes)

    def _start_pipes(self, client: socket.socket, upstream: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self.open_now += 1
            self.max_open = max(self.max_open, self.open_now)
        done = threading.Event()
        threading.Thread(
            target=self._pipe, args=(client, upstream, self.requests, done), daemon=True
        ).start()
        threading.Thread(
            target=self._pipe, args=(upstream, client, self.responses, done), daemon=True
        ).start()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, seen: list[float], done: threading.Event
    ) -> None:
        buf = b""
        try:
            while chunk := src.recv(65536):
                before = len(seen)
                buf = self._count(buf + chunk, seen)
                if self.response_delay and seen is self.responses and len(seen) > before:
                    time.sleep(self.response_delay * (len(seen) - before))
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            if not done.is_set():
                done.set()
                with self._lock:
                    self.open_now -= 1
            close_both(src, dst)

    def _count(self, buf: bytes, seen: list[float]) -> bytes:
        """Consume whole PDUs from ``buf``; note each last command fragment (PS3.8 9.3.5)."""
        while len(buf) >= 6:
            length = int.from_bytes(buf[2:6], "big")
            if len(buf) < 6 + length:
                break
            pdu, buf = buf[: 6 + length], buf[6 + length :]
            if pdu[0] != 0x04:
                continue
            pos = 6
            while pos + 6 <= len(pdu):
                item = int.from_bytes(pdu[pos : pos + 4], "big")
                header = pdu[pos + 5]
                if header & 0x03 == 0x03:
                    with self._lock:
                        seen.append(time.monotonic())
                pos += 4 + item
        return buf

    def close(self) -> None:
        self._stop.set()
        self._server.close()
