"""Hand-made upper-layer PDUs over plain sockets, for tests that play a misbehaving peer."""

from __future__ import annotations

import socket
import struct

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

from helpers.receiver_env import CALLER


def associate_rq(called: str, calling: str = CALLER) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing CT Image Storage, explicit VR LE, as context 1."""
    rq = A_ASSOCIATE()
    rq.application_context_name = "1.2.840.10008.3.1.1.1"
    rq.calling_ae_title, rq.called_ae_title = calling, called
    rq.presentation_context_definition_list = [
        build_context(CTImageStorage, [ExplicitVRLittleEndian])
    ]
    rq.presentation_context_definition_list[0].context_id = 1
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    rq.user_information = [length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(rq)
    return bytes(pdu.encode())


def associate_raw(host: str, port: int, called: str) -> socket.socket:
    """A socket on which our A-ASSOCIATE-RQ was accepted (A-ASSOCIATE-AC read)."""
    sock = socket.create_connection((host, port), 10)
    sock.sendall(associate_rq(called))
    assert read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
    return sock


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU's type and body; (-1, b"") if the peer closed first."""
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            return -1, b""
        header += chunk
    kind, length = struct.unpack(">BxI", header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return -1, b""
        body += chunk
    return kind, body


def pdu_header(kind: int, length: int) -> bytes:
    """A PDU's 6-byte header: type and announced length."""
    return struct.pack(">BxI", kind, length)


def pdv(context: int, control: int, data: bytes) -> bytes:
    """A P-DATA-TF PDU with one PDV item."""
    item = struct.pack(">IBB", len(data) + 2, context, control) + data
    return pdu_header(0x04, len(item)) + item


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end closed (or reset) ``sock``; reads and drops what it sent first."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset
    finally:
        sock.setblocking(True)
