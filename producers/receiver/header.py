"""The two attributes the receiver needs from each instance, read without pydicom.

A C-STORE handler needs StudyInstanceUID (0020,000D) and Modality (0008,0060); both lie in the
first few KiB. Building a pydicom Dataset for them costs ~0.4 ms per instance (more than the
SHA-256 of a 0.5 MB image), so this walks the element headers of a little-endian dataset
(explicit or implicit VR, sequences of defined or undefined length) and stops after
(0020,000D). Anything else (big endian, deflated, a truncated or malformed head) returns None
and the caller asks pydicom instead, so this is only ever a shortcut, never the judge.
"""

from __future__ import annotations

import struct

from pydicom.uid import UID

PREAMBLE = 128 + 4  # preamble and "DICM"
STUDY_UID, MODALITY = 0x0020000D, 0x00080060
TRANSFER_SYNTAX = 0x00020010
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")


class _Unreadable(Exception):
    pass


def _tag(buf: bytes, pos: int) -> int:
    if pos + 4 > len(buf):
        raise _Unreadable
    group, element = _U16.unpack_from(buf, pos)[0], _U16.unpack_from(buf, pos + 2)[0]
    return (group << 16) | element


def _element(buf: bytes, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR or b'', value offset, value length) of the element at ``pos``."""
    tag = _tag(buf, pos)
    if tag >> 16 == 0xFFFE or not explicit:
        if pos + 8 > len(buf):
            raise _Unreadable
        return tag, b"", pos + 8, _U32.unpack_from(buf, pos + 4)[0]
    vr = buf[pos + 4 : pos + 6]
    if vr in LONG_VRS:
        if pos + 12 > len(buf):
            raise _Unreadable
        return tag, vr, pos + 12, _U32.unpack_from(buf, pos + 8)[0]
    if pos + 8 > len(buf):
        raise _Unreadable
    return tag, vr, pos + 8, _U16.unpack_from(buf, pos + 6)[0]


def _skip_undefined(buf: bytes, pos: int, explicit: bool, depth: int = 0) -> int:
    """Skip the items of an undefined-length sequence starting at ``pos``; returns the offset
    after its sequence delimiter."""
    if depth > 32:
        raise _Unreadable
    while True:
        tag, _vr, start, length = _element(buf, pos, False)
        if tag == SEQUENCE_END:
            return start
        if tag != ITEM:
            raise _Unreadable
        if length != UNDEFINED:
            pos = start + length
            continue
        pos = start
        while _tag(buf, pos) != ITEM_END:
            pos = _skip(buf, pos, explicit, depth + 1)
        pos += 8


def _skip(buf: bytes, pos: int, explicit: bool, depth: int = 0) -> int:
    tag, vr, start, length = _element(buf, pos, explicit)
    if length != UNDEFINED:
        return start + length
    # undefined length: a sequence (UN of undefined length holds implicit VR, PS3.5 6.2.2)
    return _skip_undefined(buf, start, explicit and vr != b"UN", depth)


def _text(buf: bytes, start: int, length: int) -> str:
    if start + length > len(buf):
        raise _Unreadable
    return buf[start : start + length].decode("ascii").strip(" \x00")


def read(head: bytes) -> tuple[str, str] | None:
    """(StudyInstanceUID, Modality) from the start of a DICOM file, or None if this reader
    cannot tell (then ask pydicom)."""
    try:
        if head[128:132] != b"DICM":
            return None
        pos, syntax = PREAMBLE, None
        while _tag(head, pos) >> 16 == 0x0002:
            tag, _vr, start, length = _element(head, pos, True)
            if tag == TRANSFER_SYNTAX:
                syntax = _text(head, start, length)
            pos = start + length
        ts = UID(syntax or "")
        if not ts.is_transfer_syntax or ts.is_deflated or not ts.is_little_endian:
            return None
        explicit = not ts.is_implicit_VR
        study, modality = "", ""
        while True:
            tag, vr, start, length = _element(head, pos, explicit)
            if tag > STUDY_UID:
                break
            if tag == MODALITY:
                modality = _text(head, start, length).upper()
            elif tag == STUDY_UID:
                study = _text(head, start, length)
            pos = _skip(head, pos, explicit) if length == UNDEFINED else start + length
        return (study, modality) if study else None
    except (_Unreadable, UnicodeDecodeError, struct.error):
        return None
