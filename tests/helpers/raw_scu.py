"""A minimal storage SCU that puts dataset bytes on the wire exactly as given.

pynetdicom and storescu both need a dataset they can read (storescu re-encodes it; pynetdicom's
chunked sending still parses the File Meta Information in front of it), so neither can send a
truncated, empty or garbage dataset. This SCU speaks just enough of the upper layer (PS3.8:
A-ASSOCIATE, P-DATA, A-RELEASE, A-ABORT) and DIMSE (PS3.7 C-STORE) for that: one presentation
context per (SOP class, transfer syntax), one operation at a time, many per association.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.10.543.99.1"
MAX_PDU = 65536
#: what we send in (dcmtk's default): small enough that a dataset spans many PDUs
SEND_PDU = 16384
UNANSWERED = None


class AssociationFailed(Exception):
    """The peer rejected or aborted the association request."""


@dataclass(frozen=True)
class Answer:
    """A C-STORE's outcome: the status, or None with a note (abort, closed, timeout...)."""

    status: int | None
    note: str = ""


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(body)) + body


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _even(uid: bytes) -> bytes:
    return uid + b"\x00" if len(uid) % 2 else uid


def store_command(message_id: int, sop_class: str, sop_instance: bytes) -> bytes:
    """A C-STORE-RQ command set (Implicit VR Little Endian), with a data set."""
    body = _element(0x00000002, _even(sop_class.encode()))
    body += _element(0x00000100, struct.pack("<H", 0x0001))
    body += _element(0x00000110, struct.pack("<H", message_id))
    body += _element(0x00000700, struct.pack("<H", 0x0000))
    body += _element(0x00000800, struct.pack("<H", 0x0000))
    body += _element(0x00001000, _even(sop_instance))
    return _element(0x00000000, struct.pack("<I", len(body))) + body


def _command_status(command: bytes) -> int | None:
    pos = 0
    while pos + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, pos)
        if (group, element) == (0x0000, 0x0900) and length == 2:
            return int(struct.unpack_from("<H", command, pos + 8)[0])
        pos += 8 + length
    return None


class RawSCU:
    """One association at a time to ``host:port``; see the module docstring."""

    def __init__(
        self,
        host: str,
        port: int,
        calling: str,
        called: str,
        *,
        timeout: float = 60.0,
    ) -> None:
        self.host, self.port, self.calling, self.called = host, port, calling, called
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.contexts: dict[tuple[str, str], int] = {}
        self.peer_max = 0
        self.message_id = 0

    @property
    def alive(self) -> bool:
        return self.sock is not None

    # --- association ---------------------------------------------------------------------
    def open(self, contexts: Iterable[tuple[str, str]]) -> None:
        """Associate, proposing one presentation context per (SOP class, syntax)."""
        wanted = sorted(set(contexts))
        if len(wanted) > 128:
            raise ValueError("at most 128 presentation contexts per association")
        items = _item(0x10, APPLICATION_CONTEXT)
        proposed: dict[int, tuple[str, str]] = {}
        for n, (sop_class, syntax) in enumerate(wanted):
            cid = 2 * n + 1
            proposed[cid] = (sop_class, syntax)
            sub = _item(0x30, sop_class.encode()) + _item(0x40, syntax.encode())
            items += _item(0x20, struct.pack(">B3x", cid) + sub)
        user = _item(0x51, struct.pack(">I", MAX_PDU)) + _item(0x52, IMPLEMENTATION_UID)
        items += _item(0x50, user)
        header = struct.pack(">H2x16s16s32x", 1, self._ae(self.called), self._ae(self.calling))
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        try:
            self._send(_pdu(0x01, header + items))
            kind, body = self._read_pdu()
        except OSError as exc:
            self.close()
            raise AssociationFailed(f"no answer to A-ASSOCIATE-RQ: {exc!r}") from None
        if kind != 0x02:
            self.close()
            raise AssociationFailed(f"PDU type {kind:#x} in answer: {body[:8].hex()}")
        self.contexts, self.peer_max = {}, 0
        pos = 68
        while pos + 4 <= len(body):
            item, length = struct.unpack_from(">BxH", body, pos)
            value = body[pos + 4 : pos + 4 + length]
            if item == 0x21 and value[2] == 0:
                self.contexts[proposed[value[0]]] = value[0]
            elif item == 0x50:
                sub = 0
                while sub + 4 <= len(value):
                    sub_item, sub_len = struct.unpack_from(">BxH", value, sub)
                    if sub_item == 0x51:
                        self.peer_max = struct.unpack_from(">I", value, sub + 4)[0]
                    sub += 4 + sub_len
            pos += 4 + length

    def release(self) -> None:
        if self.sock is None:
            return
        try:
            self._send(_pdu(0x05, b"\x00" * 4))
            self._read_pdu()
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # --- C-STORE -------------------------------------------------------------------------
    def store(
        self,
        sop_class: str,
        syntax: str,
        sop_instance: bytes,
        data: bytes,
        command_sop_class: str = "",
    ) -> Answer:
        """Send one C-STORE on the (sop_class, syntax) context; the peer's answer."""
        if self.sock is None:
            return Answer(UNANSWERED, "not associated")
        cid = self.contexts.get((sop_class, syntax))
        if cid is None:
            return Answer(UNANSWERED, "context not accepted")
        self.message_id = self.message_id % 0xFFFF + 1
        command = store_command(self.message_id, command_sop_class or sop_class, sop_instance)
        room = min(self.peer_max or SEND_PDU, SEND_PDU) - 6
        message = _pdu(0x04, _pdv(cid, 0x03, command))
        if not data:  # an empty data set is one empty last fragment
            message += _pdu(0x04, _pdv(cid, 0x02, b""))
        for start in range(0, len(data), room):
            last = start + room >= len(data)
            message += _pdu(0x04, _pdv(cid, 0x02 if last else 0x00, data[start : start + room]))
        try:
            self._send(message)
            return self._answer()
        except TimeoutError:
            self.close()
            return Answer(UNANSWERED, "timeout")
        except OSError as exc:
            answer = self._after_failure()
            return answer or Answer(UNANSWERED, f"send failed: {type(exc).__name__}")

    def _answer(self) -> Answer:
        command = b""
        while True:
            kind, body = self._read_pdu()
            if kind == 0x07:
                self.close()
                return Answer(UNANSWERED, f"A-ABORT source {body[2]} reason {body[3]}")
            if kind != 0x04:
                self.close()
                return Answer(UNANSWERED, f"PDU type {kind:#x}")
            pos = 0
            while pos + 6 <= len(body):
                length, _cid, control = struct.unpack_from(">IBB", body, pos)
                command += body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 0x03 == 0x03:
                    status = _command_status(command)
                    return Answer(status, "" if status is not None else "no status")

    def _after_failure(self) -> Answer | None:
        """The peer closed while we sent: read an A-ABORT it may have sent first."""
        try:
            kind, body = self._read_pdu()
        except OSError:
            kind, body = 0, b""
        self.close()
        if kind == 0x07:
            return Answer(UNANSWERED, f"A-ABORT source {body[2]} reason {body[3]}")
        return None

    # --- bytes ---------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def _read_exact(self, n: int) -> bytes:
        assert self.sock is not None
        chunks, got = [], 0
        while got < n:
            chunk = self.sock.recv(min(n - got, 1 << 20))
            if not chunk:
                raise ConnectionResetError("peer closed the connection")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _read_pdu(self) -> tuple[int, bytes]:
        kind, length = struct.unpack(">BxI", self._read_exact(6))
        return kind, self._read_exact(length)

    @staticmethod
    def _ae(title: str) -> bytes:
        return title.encode().ljust(16)[:16]


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxI", kind, len(body)) + body


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def send_all(scu: RawSCU, cases: Sequence[object], *, per_association: int = 100) -> list[Answer]:
    """Send ``cases`` (objects with sop_class, syntax, sop_instance, data, command_sop_class)
    in order, ``per_association`` per association; after an abort the rest of the group goes
    on a new association. One answer per case."""
    answers: list[Answer] = []
    for start in range(0, len(cases), per_association):
        group = list(cases[start : start + per_association])
        for i, case in enumerate(group):
            if not scu.alive:
                rest = group[i:]
                try:
                    scu.open((c.sop_class, c.syntax) for c in rest)  # type: ignore[attr-defined]
                except (AssociationFailed, OSError) as exc:
                    answers.append(Answer(UNANSWERED, f"association failed: {exc}"))
                    continue
            c = case
            answers.append(
                scu.store(c.sop_class, c.syntax, c.sop_instance, c.data, c.command_sop_class)  # type: ignore[attr-defined]
            )
        scu.release()
    return answers
