"""The DICOM Upper Layer (PS3.8) on the acceptor side, for a storage SCP; one thread per
association, blocking sockets.

Why not pynetdicom's: its DUL and association reactors poll with 1 ms sleeps, read sockets
4 KiB at a time, pass every PDU through several queues and decode every command set into a
pydicom Dataset; measured, that is ~3 ms of CPU per 0.5 MB instance, twice what everything
else costs (see bench/receiver/RESULTS.md). Here a dataset goes from the socket buffer to the
spool file without another copy. pynetdicom still does what it does well: decoding the
A-ASSOCIATE-RQ, encoding the A-ASSOCIATE-AC/RJ, and presentation-context and role negotiation.

State machine (the acceptor's part of PS3.8 9.2): Sta2 (awaiting A-ASSOCIATE-RQ, ARTIM) ->
A-ASSOCIATE-AC (Sta6) or -RJ (Sta13); in Sta6 P-DATA-TF carries DIMSE messages, one at a time
(no asynchronous operations are negotiated); A-RELEASE-RQ -> A-RELEASE-RP (Sta13); A-ABORT
or a closed connection ends it; anything unexpected or malformed -> A-ABORT (provider).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from typing import TYPE_CHECKING, Protocol

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from . import dimse
from .dimse import Command, CommandError
from .intake import SpoolTempFile

if TYPE_CHECKING:
    from .listener import Listener

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
ARTIM_SECONDS = 30.0
NETWORK_TIMEOUT = 60.0
TLS_HANDSHAKE_SECONDS = 15.0
MAX_RQ_BYTES = 1 << 20
UNLIMITED_PDU_CAP = 64 << 20  # max_pdu 0 means "no limit"; a rogue peer still gets one
_HEADER = struct.Struct(">BxI")
_PDV = struct.Struct(">IBB")
# A-ABORT reasons (service provider): unrecognised PDU, unexpected PDU, invalid parameter
UNRECOGNISED, UNEXPECTED, INVALID = 0x01, 0x02, 0x06
REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, provider (presentation): local limit exceeded


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
    supported: list[PresentationContext]

    def screen(self, primitive: A_ASSOCIATE, address: str) -> tuple[int, int, int] | None: ...

    def accepted(self) -> None: ...

    def rejected(self, reason: str) -> None: ...

    def new_file(self) -> SpoolTempFile: ...

    def store(self, command: Command, received: SpoolTempFile) -> int: ...


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    got = 0
    with memoryview(buf) as view:
        while got < n:
            k = sock.recv_into(view[got:], n - got)
            if not k:
                raise Closed
            got += k
    return buf


class Association(threading.Thread):
    """One connection: negotiation, then C-STORE/C-ECHO until release or abort."""

    def __init__(
        self, sock: socket.socket, address: str, service: Service, server: Listener
    ) -> None:
        super().__init__(name=f"assoc-{address}", daemon=True)
        self.sock = sock
        self.address = address
        self.service = service
        self.server = server
        self.contexts: dict[int, tuple[str, str]] = {}
        self.peer_max_pdu = 0
        self._command = bytearray()
        self._pending: tuple[Command, int, SpoolTempFile] | None = None
        self._send_lock = threading.Lock()  # abort() may come from a shutting-down thread

    def run(self) -> None:
        try:
            if self.server.tls is not None and not self._handshake():
                return
            self._serve()
        except ProtocolError as exc:
            log.warning("association from %s aborted: %s", self.address, exc)
            self._send_abort(exc.reason)
        except TimeoutError:
            log.warning("association from %s timed out; aborting", self.address)
            self._send_abort(0)
        except (Closed, OSError):
            pass  # the peer went away (an abort it did not send, or a SIGKILL'd sender)
        except Exception:  # noqa: BLE001 - a bug must end this association only
            log.exception("association from %s failed", self.address)
            self._send_abort(0)
        finally:
            self._discard_pending()
            try:
                self.sock.close()
            except OSError:
                pass
            self.server.finished(self)

    def _handshake(self) -> bool:
        try:
            self.sock.settimeout(TLS_HANDSHAKE_SECONDS)
            self.sock = self.server.tls.wrap_socket(self.sock, server_side=True)  # type: ignore[union-attr]
        except OSError as exc:
            self.server.tls_failed(self.address, exc)
            return False
        return True

    # --- PDUs ---------------------------------------------------------------------------
    def _read_pdu(self, limit: int) -> tuple[int, bytearray, bytes]:
        header = bytes(_recv_exact(self.sock, 6))
        kind, length = _HEADER.unpack(header)
        if length > limit:
            raise ProtocolError(INVALID, f"PDU of {length} bytes exceeds {limit}")
        return kind, _recv_exact(self.sock, length), header

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _send_abort(self, reason: int) -> None:
        try:
            self._send(_HEADER.pack(0x07, 4) + bytes([0, 0, 0x02, reason]))
        except OSError:
            pass

    def _wait_for_close(self) -> None:
        """Sta13: the peer closes the transport (ARTIM bounds the wait)."""
        self.sock.settimeout(ARTIM_SECONDS / 3)
        try:
            while self.sock.recv(4096):
                pass
        except OSError:
            pass

    # --- Sta2: negotiation ----------------------------------------------------------------
    def _serve(self) -> None:
        self.sock.settimeout(ARTIM_SECONDS)
        kind, body, header = self._read_pdu(MAX_RQ_BYTES)
        if kind != 0x01:
            raise ProtocolError(UNEXPECTED, f"PDU type {kind} before A-ASSOCIATE-RQ")
        rq = A_ASSOCIATE_RQ()
        try:
            rq.decode(header + bytes(body))
            primitive = rq.to_primitive()
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the peer's PDU
            raise ProtocolError(INVALID, f"undecodable A-ASSOCIATE-RQ ({exc})") from exc
        rejection = self._screen(rq, primitive)
        if rejection is not None:
            reject = A_ASSOCIATE()
            reject.result, reject.result_source, reject.diagnostic = rejection
            pdu = A_ASSOCIATE_RJ()
            pdu.from_primitive(reject)
            self._send(pdu.encode())
            self._wait_for_close()
            return
        self._accept(primitive)
        self.service.accepted()
        self._established()

    def _screen(self, rq: A_ASSOCIATE_RQ, primitive: A_ASSOCIATE) -> tuple[int, int, int] | None:
        if not rq.protocol_version & 0x01:
            self.service.rejected("protocol_version")
            return (0x01, 0x02, 0x02)
        if str(primitive.application_context_name) != APPLICATION_CONTEXT:
            self.service.rejected("application_context")
            return (0x01, 0x01, 0x02)
        rejection = self.service.screen(primitive, self.address)
        if rejection is None and self.server.active() > self.server.max_associations:
            self.service.rejected("busy")
            return REJECT_BUSY
        return rejection

    def _accept(self, rq: A_ASSOCIATE) -> None:
        roles = {
            UID(item.sop_class_uid): (item.scu_role, item.scp_role)
            for item in rq.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
        }
        results, role_items = negotiate_as_acceptor(
            rq.presentation_context_definition_list, self.service.supported, roles
        )
        self.contexts = {
            int(cx.context_id or 0): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in results
            if cx.result == 0x00
        }
        self.peer_max_pdu = int(rq.maximum_length_received or 0)
        ac = A_ASSOCIATE()
        ac.application_context_name = APPLICATION_CONTEXT
        ac.calling_ae_title = rq.calling_ae_title
        ac.called_ae_title = rq.called_ae_title
        ac.result, ac.result_source = 0x00, 0x01
        ac.presentation_context_definition_results_list = results
        length = MaximumLengthNotification()
        length.maximum_length_received = self.service.max_pdu
        uid = ImplementationClassUIDNotification()
        uid.implementation_class_uid = dimse.IMPLEMENTATION_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = dimse.IMPLEMENTATION_VERSION
        ac.user_information = [length, uid, version, *role_items]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(ac)
        self._send(pdu.encode())

    # --- Sta6: established ----------------------------------------------------------------
    def _established(self) -> None:
        self.sock.settimeout(NETWORK_TIMEOUT)
        limit = self.service.max_pdu or UNLIMITED_PDU_CAP
        while True:
            kind, body, _header = self._read_pdu(limit)
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
            self._respond(context_id, command, dimse.C_ECHO_RSP, 0x0000)
        elif command.field == dimse.C_STORE_RQ and command.has_dataset:
            received = self.service.new_file()
            abstract_syntax, transfer_syntax = self.contexts[context_id]
            received.write(dimse.file_meta(abstract_syntax, command.sop_instance, transfer_syntax))
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
        self._pending = None
        abstract_syntax = self.contexts[context_id][0]
        try:
            if command.sop_class != abstract_syntax:
                status = 0x0122  # SOP class not supported (not what the context was for)
            else:
                status = self.service.store(command, received)
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
        self._send_abort(0)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _discard(received: SpoolTempFile) -> None:
    """Close a received file; remove it unless the spool adopted it."""
    received.close()
    if not received.adopted:
        received.unlink()
