"""The DICOM Upper Layer (PS3.8) on the acceptor side, for a storage SCP; one thread per
association, blocking sockets.

Why not pynetdicom's: its DUL and association reactors poll with 1 ms sleeps, read sockets
4 KiB at a time, pass every PDU through several queues and decode every command set into a
pydicom Dataset; measured, that is ~3 ms of CPU per 0.5 MB instance, twice what everything
else costs (see bench/receiver/RESULTS.md). Here a dataset goes from the socket buffer to the
spool file without another copy. The A-ASSOCIATE-RQ is parsed, negotiated and answered in
``associate.py`` (with a cache per proposal set), also without pynetdicom.

State machine (the acceptor's part of PS3.8 9.2): Sta2 (awaiting A-ASSOCIATE-RQ, ARTIM) ->
A-ASSOCIATE-AC (Sta6) or -RJ (Sta13); in Sta6 P-DATA-TF carries DIMSE messages, one at a time
(no asynchronous operations are negotiated); A-RELEASE-RQ -> A-RELEASE-RP (Sta13); A-ABORT
or a closed connection ends it; anything unexpected or malformed -> A-ABORT (provider).

Every wait is an absolute deadline, never a per-``recv`` timeout that each trickled byte would
restart: ARTIM runs from the TCP connect to the whole A-ASSOCIATE-RQ (Sta2, TLS handshake
included) and from our A-ASSOCIATE-RJ or A-RELEASE-RP to the peer closing (Sta13); on an
association, each PDU must arrive whole within the network timeout of our starting to wait for
it. Buffers grow with the bytes that arrived, never to a length the peer merely announced.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from . import dimse
from .associate import APPLICATION_CONTEXT, Acceptor, AssociateRequest, encode_associate_rj
from .dimse import Command, CommandError
from .intake import SpoolTempFile
from .status import (
    ABORT_INVALID_PARAMETER,
    ABORT_NOT_SPECIFIED,
    ABORT_SOURCE_PROVIDER,
    ABORT_UNEXPECTED_PDU,
    ABORT_UNRECOGNISED_PDU,
    CANNOT_UNDERSTAND,
    REJECTIONS,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
    Rejection,
)

log = logging.getLogger(__name__)

TLS_HANDSHAKE_SECONDS = 15.0
MAX_RQ_BYTES = 1 << 20
MAX_COMMAND_BYTES = 64 << 10
UNLIMITED_PDU_CAP = 64 << 20  # max_pdu 0 means "no limit"; a rogue peer still gets one
# what a PDU buffer starts at (and grows by doubling, as bytes arrive): small before
# association, where nobody is known yet; one allocation for the default 128 KiB P-DATA after
RQ_CHUNK = 16 << 10
PDU_CHUNK = 256 << 10
_HEADER = struct.Struct(">BxI")
_PDV = struct.Struct(">IBB")
UNRECOGNISED, UNEXPECTED, INVALID = (
    ABORT_UNRECOGNISED_PDU,
    ABORT_UNEXPECTED_PDU,
    ABORT_INVALID_PARAMETER,
)


@dataclass(frozen=True)
class Limits:
    """Deadlines and connection caps of one SCP process (``scp.limits_for``: the trust file's,
    whose parser owns the defaults)."""

    artim_seconds: float
    network_timeout_seconds: float
    max_associations: int
    max_pending: int
    max_pending_per_address: int


class Closed(Exception):
    """The peer closed the connection."""


class ProtocolError(Exception):
    """The peer broke the protocol: answered with A-ABORT."""

    def __init__(self, reason: int, what: str) -> None:
        super().__init__(what)
        self.reason = reason


class Service(Protocol):
    """What an association needs from the SCP it serves."""

    max_pdu: int
    acceptor: Acceptor

    def screen(self, request: AssociateRequest, address: str) -> Rejection | None: ...

    def accepted(self) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def timed_out(self) -> None: ...

    def new_file(self) -> SpoolTempFile: ...

    def store(self, command: Command, received: SpoolTempFile, calling_ae: str) -> int: ...


class Connections(Protocol):
    """What an association needs from the listener that accepted it (``listener.py``)."""

    limits: Limits
    tls: ssl.SSLContext | None
    tls_failed: Callable[[str, OSError], None]

    def establish(self, assoc: Association) -> bool:
        """Count ``assoc`` as established; False if ``max_associations`` are; Closed if it
        was closed meanwhile to make room for newer connections."""
        ...

    def finished(self, assoc: Association) -> None: ...


def _recv_exact(sock: socket.socket, n: int, deadline: float, chunk: int) -> bytearray:
    """``n`` bytes by ``deadline`` (monotonic), else TimeoutError. The buffer starts at
    ``chunk`` bytes and doubles as it fills: memory follows what arrived, not what was announced."""
    buf = bytearray(min(n, chunk))
    got = 0
    while got < n:
        if got == len(buf):
            buf.extend(bytes(min(n - got, len(buf))))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        with memoryview(buf) as view:
            k = sock.recv_into(view[got:], len(buf) - got)
        if not k:
            raise Closed
        got += k
    return buf


class Association(threading.Thread):
    """One connection: negotiation, then C-STORE/C-ECHO until release or abort."""

    def __init__(
        self, sock: socket.socket, address: str, service: Service, server: Connections
    ) -> None:
        super().__init__(name=f"assoc-{address}", daemon=True)
        self.sock = sock
        self.address = address
        self.service = service
        self.server = server
        self.limits = server.limits
        self.state = "Sta2"
        self.artim_deadline = time.monotonic() + self.limits.artim_seconds  # from the connect
        self.contexts: dict[int, tuple[str, str]] = {}
        self.peer_max_pdu = 0
        self.calling_ae = ""  # who sent what: recorded with each instance (not patient data)
        self._command = bytearray()
        self._pending: tuple[Command, int, SpoolTempFile] | None = None
        self._send_lock = threading.Lock()  # abort() may come from a shutting-down thread
        self._fileno = sock.fileno()  # survives the TLS wrap, for close_transport()

    def run(self) -> None:
        try:
            if self.server.tls is not None and not self._handshake():
                return
            self._serve()
        except ProtocolError as exc:
            log.warning("association from %s aborted: %s", self.address, exc)
            self._send_abort(exc.reason)
        except TimeoutError:
            self._timed_out()
        except (Closed, OSError):
            pass  # the peer went away (an abort it did not send, or a SIGKILL'd sender)
        except Exception:  # noqa: BLE001 - a bug must end this association only
            log.exception("association from %s failed", self.address)
            self._send_abort(ABORT_NOT_SPECIFIED)
        finally:
            self._discard_pending()
            self.server.finished(self)  # first: close_transport() never sees a closed fd
            try:
                self.sock.close()
            except OSError:
                pass

    def _timed_out(self) -> None:
        if self.state == "Sta2":
            # ARTIM expired before a whole A-ASSOCIATE-RQ: close the transport (PS3.8 AA-2)
            self.service.rejected("artim")
            log.warning("connection from %s: no A-ASSOCIATE-RQ within ARTIM; closed", self.address)
        elif self.state == "Sta6":
            self.service.timed_out()
            log.warning("association from %s: network timeout; aborting", self.address)
            self._send_abort(ABORT_NOT_SPECIFIED)
        # Sta13: the peer did not close after our RJ or RP within ARTIM; we close

    def _handshake(self) -> bool:
        try:
            remaining = self.artim_deadline - time.monotonic()
            self.sock.settimeout(max(0.001, min(TLS_HANDSHAKE_SECONDS, remaining)))
            self.sock = self.server.tls.wrap_socket(self.sock, server_side=True)  # type: ignore[union-attr]
        except OSError as exc:
            self.server.tls_failed(self.address, exc)
            return False
        return True

    # --- PDUs ---------------------------------------------------------------------------
    def _read_pdu(self, limit: int, deadline: float, chunk: int) -> tuple[int, bytearray, bytes]:
        header = bytes(_recv_exact(self.sock, 6, deadline, 6))
        kind, length = _HEADER.unpack(header)
        if length > limit:
            raise ProtocolError(INVALID, f"PDU of {length} bytes exceeds {limit}")
        return kind, _recv_exact(self.sock, length, deadline, chunk), header

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            # reads leave whatever was left of their deadline as the timeout; a peer that
            # stops reading gets the network timeout for the whole send (sendall's is total)
            self.sock.settimeout(self.limits.network_timeout_seconds)
            self.sock.sendall(data)

    def _send_abort(self, reason: int) -> None:
        try:
            abort = bytes([0, 0, ABORT_SOURCE_PROVIDER, reason])
            self._send(_HEADER.pack(0x07, 4) + abort)
        except OSError:
            pass

    def _wait_for_close(self) -> None:
        """Sta13: the peer closes the transport; ARTIM, from now, is the deadline."""
        self.state = "Sta13"
        deadline = time.monotonic() + self.limits.artim_seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.sock.settimeout(remaining)
            try:
                if not self.sock.recv(4096):
                    return
            except OSError:  # TimeoutError included: ARTIM expired, we close
                return

    # --- Sta2: negotiation ----------------------------------------------------------------
    def _serve(self) -> None:
        kind, body, header = self._read_pdu(MAX_RQ_BYTES, self.artim_deadline, RQ_CHUNK)
        if kind != 0x01:
            raise ProtocolError(UNEXPECTED, f"PDU type {kind} before A-ASSOCIATE-RQ")
        try:
            request = self.service.acceptor.parse(header + bytes(body))
        except ValueError as exc:
            raise ProtocolError(INVALID, str(exc)) from exc
        del body
        rejection = self._screen(request)
        if rejection is not None:
            self._send(encode_associate_rj(rejection))
            self._wait_for_close()
            return
        self._accept(request)
        self.service.accepted()
        self._established()

    def _screen(self, request: AssociateRequest) -> Rejection | None:
        if not request.protocol_version & 0x01:
            reason = "protocol_version"
        elif request.application_context != APPLICATION_CONTEXT:
            reason = "application_context"
        else:
            rejection = self.service.screen(request, self.address)
            if rejection is not None or self.server.establish(self):
                return rejection
            reason = "busy"  # only established associations count toward max_associations
        self.service.rejected(reason)
        return REJECTIONS[reason]

    def _accept(self, request: AssociateRequest) -> None:
        self.state = "Sta6"
        self.calling_ae = request.calling_ae
        ac, self.contexts = self.service.acceptor.accept(request)
        self.peer_max_pdu = request.proposed.max_pdu
        self._send(ac)

    def _next_pdu(self, limit: int) -> tuple[int, bytearray, bytes]:
        """The next whole PDU of an association, within the network timeout from now."""
        deadline = time.monotonic() + self.limits.network_timeout_seconds
        return self._read_pdu(limit, deadline, PDU_CHUNK)

    # --- Sta6: established ----------------------------------------------------------------
    def _established(self) -> None:
        limit = self.service.max_pdu or UNLIMITED_PDU_CAP
        while True:
            kind, body, _header = self._next_pdu(limit)
            if kind == 0x04:
                self._p_data(body)
            elif kind == 0x05:
                if self._pending is not None or self._command:
                    raise ProtocolError(UNEXPECTED, "A-RELEASE-RQ during a DIMSE message")
                self._send(_HEADER.pack(0x06, 4) + b"\x00\x00\x00\x00")
                self._wait_for_close()
                return
            elif kind == 0x07:
                return  # A-ABORT from the peer
            elif kind in (0x01, 0x02, 0x03, 0x06):
                raise ProtocolError(UNEXPECTED, f"PDU type {kind} on an established association")
            else:
                raise ProtocolError(UNRECOGNISED, f"unknown PDU type {kind}")

    def _p_data(self, body: bytearray) -> None:
        end, pos = len(body), 0
        with memoryview(body) as view:
            while pos < end:
                if pos + 6 > end:
                    raise ProtocolError(INVALID, "truncated PDV item")
                length, context_id, control = _PDV.unpack_from(body, pos)
                if length < 2 or pos + 4 + length > end:
                    raise ProtocolError(INVALID, "PDV item length out of bounds")
                if context_id not in self.contexts:
                    raise ProtocolError(INVALID, f"presentation context {context_id} not accepted")
                fragment = view[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 0x01:
                    self._command_fragment(context_id, fragment, bool(control & 0x02))
                else:
                    self._dataset_fragment(context_id, fragment, bool(control & 0x02))

    def _command_fragment(self, context_id: int, fragment: memoryview, last: bool) -> None:
        if self._pending is not None:
            raise ProtocolError(UNEXPECTED, "command fragment while a dataset is expected")
        if len(self._command) + len(fragment) > MAX_COMMAND_BYTES:
            # a command set is a few hundred bytes; one that never ends is an attack on memory
            raise ProtocolError(INVALID, "DIMSE command set exceeds its size limit")
        self._command += fragment
        if not last:
            return
        try:
            command = dimse.decode_command(self._command)
        except CommandError as exc:
            raise ProtocolError(INVALID, str(exc)) from exc
        finally:
            self._command = bytearray()
        if command.field == dimse.C_ECHO_RQ and not command.has_dataset:
            self._respond(context_id, command, dimse.C_ECHO_RSP, SUCCESS)
        elif command.field == dimse.C_STORE_RQ and command.has_dataset:
            received = self.service.new_file()
            abstract_syntax, transfer_syntax = self.contexts[context_id]
            if dimse.valid_uid(command.sop_instance):
                meta = dimse.file_meta(abstract_syntax, command.sop_instance, transfer_syntax)
                received.write(meta)
            # else: the dataset is still read to its end, then refused (see _dataset_fragment)
            self._pending = (command, context_id, received)
        elif command.field == dimse.C_CANCEL_RQ:
            pass  # nothing is ever in progress to cancel
        else:
            raise ProtocolError(UNEXPECTED, f"DIMSE command 0x{command.field:04X} not supported")

    def _dataset_fragment(self, context_id: int, fragment: memoryview, last: bool) -> None:
        if self._pending is None or self._pending[1] != context_id:
            raise ProtocolError(UNEXPECTED, "dataset fragment without its C-STORE-RQ")
        command, _cx, received = self._pending
        received.write(fragment)
        if not last:
            return
        # the whole dataset reaches the file (not yet synced) before the handler sees it: a
        # header read past the first 64 KiB must not find the last fragments still buffered
        received.flush()
        self._pending = None
        abstract_syntax = self.contexts[context_id][0]
        try:
            if command.sop_class != abstract_syntax:
                status = SOP_CLASS_NOT_SUPPORTED  # not what the context was negotiated for
            elif not dimse.valid_uid(command.sop_instance):
                status = CANNOT_UNDERSTAND  # no file can be named or filed by that UID
            else:
                status = self.service.store(command, received, self.calling_ae)
        finally:
            _discard(received)
        self._respond(context_id, command, dimse.C_STORE_RSP, status)

    def _respond(self, context_id: int, request: Command, field: int, status: int) -> None:
        encoded = dimse.encode_response(request, field, status)
        for pdu in dimse.command_pdus(context_id, encoded, self.peer_max_pdu):
            self._send(pdu)

    def _discard_pending(self) -> None:
        if self._pending is not None:
            _discard(self._pending[2])
            self._pending = None

    def abort(self) -> None:
        """From another thread (shutdown): end this association now."""
        self._send_abort(ABORT_NOT_SPECIFIED)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close_transport(self) -> None:
        """From the listener, before association (to make room): end the connection without
        a word, as PS3.8 does when ARTIM expires. Works mid-TLS-handshake too (own fd copy);
        the caller guarantees ``finished`` has not been called, so the fd is still ours."""
        try:
            dup = socket.socket(fileno=os.dup(self._fileno))
        except OSError:
            return
        with dup:
            try:
                dup.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _discard(received: SpoolTempFile) -> None:
    """Close a received file; remove it unless the spool adopted it."""
    received.close()
    if not received.adopted:
        received.unlink()
