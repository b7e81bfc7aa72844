"""The DIMSE messages a storage SCP exchanges (PS3.7): C-STORE and C-ECHO requests in, their
responses out, and the File Meta Information written in front of each stored dataset.

Command sets are always Implicit VR Little Endian group 0000 elements, a few dozen bytes, so
they are decoded and encoded here directly: building a pydicom Dataset for each (as pynetdicom
does) costs more CPU than everything else the receiver does per instance.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101
AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID = 0x00000002, 0x00000100, 0x00000110
MESSAGE_ID_RESPONDED, DATASET_TYPE, STATUS = 0x00000120, 0x00000800, 0x00000900
AFFECTED_SOP_INSTANCE = 0x00001000
#: (0000,1030) Move Originator Application Entity Title: set by an archive on each C-STORE it
#: makes for a C-MOVE (PS3.7 9.1.1.1), so a retrieved instance can be told from a pushed one
MOVE_ORIGINATOR_AE = 0x00001030
#: a UID under the UUID arc (PS3.5 B.2): no registered root needed, unique to this implementation
IMPLEMENTATION_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "smartbox/receiver/1").int)
IMPLEMENTATION_VERSION = "SMARTBOX_1"
_ELEMENT = struct.Struct("<HHI")
_US, _UL = struct.Struct("<H"), struct.Struct("<I")
_PDU = struct.Struct(">BxI")
_PDV = struct.Struct(">IBB")


class CommandError(ValueError):
    """A command set that cannot be decoded (the association is aborted)."""


@dataclass(frozen=True)
class Command:
    field: int
    message_id: int
    sop_class: str
    sop_instance: str
    has_dataset: bool
    #: the AE title that asked the archive for this instance (C-MOVE); "" when pushed
    move_originator: str = ""


_UID_CHARS = frozenset("0123456789.")


def valid_uid(value: str) -> bool:
    """Whether ``value`` is a UID PS3.5 9.1 allows: digits and dots, 1 to 64 characters."""
    return 0 < len(value) <= 64 and set(value) <= _UID_CHARS


def _uid(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")


def decode_command(data: bytes | bytearray) -> Command:
    """The fields we use from an encoded command set."""
    values: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise CommandError("truncated command element")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise CommandError("not a command set")
        values[element] = bytes(data[pos : pos + length])
        pos += length

    def us(tag: int) -> int:
        raw = values.get(tag & 0xFFFF)
        if raw is None or len(raw) != 2:
            raise CommandError(f"command element (0000,{tag & 0xFFFF:04X}) missing")
        return int(_US.unpack(raw)[0])

    return Command(
        field=us(COMMAND_FIELD),
        message_id=us(MESSAGE_ID),
        sop_class=_uid(values.get(AFFECTED_SOP_CLASS, b"")),
        sop_instance=_uid(values.get(AFFECTED_SOP_INSTANCE, b"")),
        has_dataset=us(DATASET_TYPE) != NO_DATASET,
        move_originator=_ae(values.get(MOVE_ORIGINATOR_AE, b"")),
    )


def _ae(value: bytes) -> str:
    """An AE title as sent (space padded); "" unless it is a valid one (PS3.5 6.2 AE)."""
    text = value.decode("ascii", "replace").strip(" \x00")
    if not 0 < len(text) <= 16 or any(not 0x20 <= ord(c) <= 0x7E or c == "\\" for c in text):
        return ""
    return text


def _even(value: bytes, pad: bytes = b"\x00") -> bytes:
    return value + pad if len(value) % 2 else value


def _el(tag: int, value: bytes) -> bytes:
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def encode_response(
    request: Command, field: int, status: int, *, with_instance: bool = True
) -> bytes:
    """C-STORE-RSP or C-ECHO-RSP to ``request`` with ``status``."""
    sop_class = request.sop_class if valid_uid(request.sop_class) else ""
    body = _el(AFFECTED_SOP_CLASS, _even(sop_class.encode()))
    body += _el(COMMAND_FIELD, _US.pack(field))
    body += _el(MESSAGE_ID_RESPONDED, _US.pack(request.message_id))
    body += _el(DATASET_TYPE, _US.pack(NO_DATASET))
    body += _el(STATUS, _US.pack(status))
    if with_instance and valid_uid(request.sop_instance):
        body += _el(AFFECTED_SOP_INSTANCE, _even(request.sop_instance.encode()))
    return _el(0x00000000, _UL.pack(len(body))) + body


def command_pdus(context_id: int, command: bytes, peer_max_pdu: int) -> list[bytes]:
    """P-DATA-TF PDUs carrying one command set, fragmented to the peer's maximum PDU length
    (0: no limit)."""
    room = peer_max_pdu - 6 if peer_max_pdu else len(command)
    room = max(room, 1)
    pdus = []
    for start in range(0, len(command), room):
        fragment = command[start : start + room]
        last = start + room >= len(command)
        pdv = _PDV.pack(len(fragment) + 2, context_id, 0x03 if last else 0x01) + fragment
        pdus.append(_PDU.pack(0x04, len(pdv)) + pdv)
    return pdus


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1)."""

    def ui(element: int, value: str) -> bytes:
        raw = _even(value.encode("ascii"))
        return struct.pack("<HH2sH", 0x0002, element, b"UI", len(raw)) + raw

    group = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
    group += ui(0x0002, sop_class) + ui(0x0003, sop_instance) + ui(0x0010, transfer_syntax)
    group += ui(0x0012, IMPLEMENTATION_UID)
    version = _even(IMPLEMENTATION_VERSION.encode(), b" ")
    group += struct.pack("<HH2sH", 0x0002, 0x0013, b"SH", len(version)) + version
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return b"\x00" * 128 + b"DICM" + length + group
