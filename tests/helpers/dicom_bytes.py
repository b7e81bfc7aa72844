"""Encoded DICOM datasets as bytes: an element walker and byte-level edits, for the fuzzer.

The fuzzer mutates datasets after encoding (lengths, VRs, nesting, truncation), so it needs
to know where each element's header, length field and value lie, in any of the four
uncompressed encodings, without pydicom re-encoding anything. ``walk`` only has to be right
on well-formed input (the fuzz bases); it raises ``BadBytes`` on anything else.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
# every VR of PS3.5 6.2, for swaps
VRS = [
    *b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split(),
    *sorted(LONG_VRS),
]


class BadBytes(ValueError):
    """The bytes are not a dataset this walker understands."""


@dataclass(frozen=True)
class Encoding:
    """How a dataset is encoded: VR explicit or not, byte order, deflated or not."""

    implicit: bool
    little: bool
    deflated: bool = False

    @staticmethod
    def of(syntax: str) -> Encoding:
        uid = UID(syntax)
        if not uid.is_transfer_syntax:
            raise BadBytes(f"not a transfer syntax: {syntax}")
        return Encoding(uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated)

    def u16(self) -> str:
        return "<H" if self.little else ">H"

    def tag(self) -> str:
        return "<HH" if self.little else ">HH"

    def u32(self) -> str:
        return "<I" if self.little else ">I"


@dataclass(slots=True)
class Element:
    """Where one element (or item, or delimiter) lies in the encoded bytes."""

    start: int  # offset of the tag
    tag: int
    vr: bytes  # b"" in implicit VR and for items and delimiters
    value: int  # offset of the value
    length: int  # as encoded (UNDEFINED for undefined length)
    length_at: int  # offset of the length field
    length_size: int  # 2 or 4
    end: int  # offset after the element (after its delimiter if undefined length)
    depth: int  # 0 for the top-level dataset


def _header(data: bytes, pos: int, enc: Encoding) -> tuple[int, bytes, int, int, int, int]:
    """(tag, vr, value offset, length, length offset, length size) of the element at pos."""
    if pos + 8 > len(data):
        raise BadBytes(f"element header cut at {pos}")
    group, elem = struct.unpack_from(enc.tag(), data, pos)
    tag = group << 16 | elem
    if enc.implicit or group == 0xFFFE:
        return tag, b"", pos + 8, struct.unpack_from(enc.u32(), data, pos + 4)[0], pos + 4, 4
    vr = data[pos + 4 : pos + 6]
    if vr in LONG_VRS:
        if pos + 12 > len(data):
            raise BadBytes(f"long element header cut at {pos}")
        return tag, vr, pos + 12, struct.unpack_from(enc.u32(), data, pos + 8)[0], pos + 8, 4
    if vr not in VRS:
        raise BadBytes(f"unknown VR {vr!r} at {pos}")
    return tag, vr, pos + 8, struct.unpack_from(enc.u16(), data, pos + 6)[0], pos + 6, 2


def _is_sequence(tag: int, vr: bytes, length: int, enc: Encoding) -> bool:
    if vr == b"SQ" or length == UNDEFINED:
        return True
    if not enc.implicit or tag & 0x10000:  # private tags: not in the dictionary
        return False
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


def walk(data: bytes, enc: Encoding) -> list[Element]:
    """Every element, item and delimiter of an encoded (not deflated) dataset, in order."""
    out: list[Element] = []

    def add(pos: int, depth: int, inner: Encoding) -> tuple[int, int]:
        tag, vr, value, length, at, size = _header(data, pos, inner)
        out.append(Element(pos, tag, vr, value, length, at, size, value, depth))
        return len(out) - 1, tag

    def items(index: int, inner: Encoding, raw: bool) -> int:
        """The items of the sequence (or encapsulated pixel data) at out[index]; its end."""
        seq = out[index]
        limit = len(data) if seq.length == UNDEFINED else seq.value + seq.length
        pos = seq.value
        while pos < limit:
            i, tag = add(pos, seq.depth + 1, inner)
            item = out[i]
            if tag == SEQ_END and seq.length == UNDEFINED:
                item.end = item.value
                return item.value
            if tag != ITEM:
                raise BadBytes(f"not an item at {pos}")
            if raw:
                end = item.value + item.length
            elif item.length == UNDEFINED:
                end = elements(item.value, len(data), seq.depth + 1, inner, until_item_end=True)
            else:
                end = elements(item.value, item.value + item.length, seq.depth + 1, inner)
            item.end = end
            pos = end
        if seq.length == UNDEFINED or pos != limit:
            raise BadBytes("sequence not closed")
        return pos

    def elements(pos: int, limit: int, depth: int, inner: Encoding, until_item_end=False) -> int:
        while pos < limit:
            i, tag = add(pos, depth, inner)
            el = out[i]
            if tag == ITEM_END and until_item_end:
                el.end = el.value
                return el.value
            if tag >> 16 == 0xFFFE:
                raise BadBytes(f"stray delimiter at {pos}")
            if tag == PIXEL_DATA and el.length == UNDEFINED:
                end = items(i, inner, raw=True)
            elif _is_sequence(tag, el.vr, el.length, inner):
                # UN of undefined length holds implicit VR little endian (PS3.5 6.2.2)
                implicit_un = el.vr == b"UN"
                end = items(i, Encoding(True, True) if implicit_un else inner, raw=False)
            else:
                end = el.value + el.length
                if end > len(data):
                    raise BadBytes(f"value beyond the end at {pos}")
            el.end = end
            pos = end
        if until_item_end:
            raise BadBytes("item not closed")
        return pos

    elements(0, len(data), 0, enc)
    return out


def top_level(data: bytes, enc: Encoding) -> list[Element]:
    return [e for e in walk(data, enc) if e.depth == 0]


def encode_element(tag: int, vr: bytes, value: bytes, enc: Encoding) -> bytes:
    """One element with a defined length (value padded to even length)."""
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB", b"UN") else b" "
    tags = struct.pack(enc.tag(), tag >> 16, tag & 0xFFFF)
    if enc.implicit:
        return tags + struct.pack(enc.u32(), len(value)) + value
    if vr in LONG_VRS:
        return tags + vr + b"\x00\x00" + struct.pack(enc.u32(), len(value)) + value
    return tags + vr + struct.pack(enc.u16(), len(value)) + value


def undefined_header(tag: int, enc: Encoding, vr: bytes = b"SQ") -> bytes:
    """The header of a sequence or item of undefined length."""
    tags = struct.pack(enc.tag(), tag >> 16, tag & 0xFFFF)
    if enc.implicit or tag >> 16 == 0xFFFE:
        return tags + b"\xff\xff\xff\xff"
    return tags + vr + b"\x00\x00\xff\xff\xff\xff"


def insert_at(data: bytes, enc: Encoding, tag: int) -> int:
    """Offset where a top-level element ``tag`` belongs (before the first greater tag)."""
    for el in top_level(data, enc):
        if el.tag >= tag:
            return el.start
    return len(data)


def set_element(data: bytes, enc: Encoding, tag: int, vr: bytes, value: bytes) -> bytes:
    """Replace (or insert, in tag order) a top-level element."""
    new = encode_element(tag, vr, value, enc)
    for el in top_level(data, enc):
        if el.tag == tag:
            return data[: el.start] + new + data[el.end :]
        if el.tag > tag:
            return data[: el.start] + new + data[el.start :]
    return data + new


def put_length(data: bytes, el: Element, length: int, enc: Encoding) -> bytes:
    """``data`` with the length field of ``el`` overwritten."""
    fmt = enc.u32() if el.length_size == 4 else enc.u16()
    field = struct.pack(fmt, length & (0xFFFFFFFF if el.length_size == 4 else 0xFFFF))
    return data[: el.length_at] + field + data[el.length_at + el.length_size :]


def encode_dataset(ds: Dataset, enc: Encoding) -> bytes:
    """The dataset alone (no preamble, no File Meta Information), inflated."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        del ds.file_meta
    try:
        out = io.BytesIO()
        dcmwrite(
            out, ds, implicit_vr=enc.implicit, little_endian=enc.little, enforce_file_format=False
        )
        return out.getvalue()
    finally:
        if meta is not None:
            ds.file_meta = meta


def deflate(data: bytes, level: int = 6) -> bytes:
    """Raw deflate (no zlib header), as the Deflated transfer syntax carries it."""
    c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def inflate(data: bytes) -> bytes:
    return zlib.decompress(data, -zlib.MAX_WBITS)


def deflate_bomb(prefix: bytes, zeros: int, suffix: bytes) -> bytes:
    """Raw deflate of ``prefix + zeros * b"\\0" + suffix`` built in O(1) time: after a full
    flush the compressor starts afresh, so each MiB of zeros compresses to the same bytes and
    the chunk can be repeated."""
    mib = 1 << 20

    def part(data: bytes, final: bool) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)

    chunks, rest = divmod(zeros, mib)
    return (
        part(prefix, False)
        + part(b"\x00" * mib, False) * chunks
        + part(b"\x00" * rest + suffix, True)
    )


def file_dataset(raw: bytes) -> tuple[str, bytes]:
    """(transfer syntax, dataset bytes inflated) of a Part-10 file."""
    if raw[128:132] != b"DICM":
        raise BadBytes("not a Part-10 file")
    meta = top_level_meta(raw[132:])
    syntax = meta[0].rstrip(b"\x00 ").decode()
    body = raw[132 + meta[1] :]
    return syntax, inflate(body) if Encoding.of(syntax).deflated else body


def top_level_meta(data: bytes) -> tuple[bytes, int]:
    """(Transfer Syntax UID value, length of the File Meta group) of bytes after ``DICM``."""
    enc, pos, syntax = Encoding(False, True), 0, b""
    while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        tag, _vr, value, length, _at, _size = _header(data, pos, enc)
        if tag == 0x00020010:
            syntax = data[value : value + length]
        pos = value + length
    return syntax, pos
