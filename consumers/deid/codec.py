"""Reading what a trust sent, and writing the result in the same transfer syntax.

A deflated dataset is inflated within the trust's limits first (``inflate``), never whole.

Writing is split around the pixel data so the verification gate can scan every byte of the
output except the pixels, without encoding anything twice. Pixel data is written from the
bytes as read: never decoded, never decompressed (unless a mask rule rewrote native pixels).

Reading: the plain case (little endian, defined lengths) is cut from the bytes by
``rawread`` into the same elements ``dcmread`` would make; everything else is ``dcmread``.

Speed: elements still in their received encoding (pydicom's ``RawDataElement``: everything
the walk did not touch) are copied through as header + value bytes, sequences are assembled
here from their items, and the output is joined once, so the 0.5 MB of pixel data is copied
once. Only changed values go through pydicom's per-element writer. The result is byte for
byte what ``dcmwrite`` produces for the same dataset (tested).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from . import rawread
from .config import InflateLimits
from .inflate import DecompressionLimit, read_deflated
from .table import CODE_VERSION

#: Identifies this de-identifier in the file meta (stable, derived, under 2.25).
IMPLEMENTATION_CLASS_UID = "2.25." + str(
    int.from_bytes(hashlib.sha256(b"smartbox-deid implementation").digest()[:16], "big")
)
IMPLEMENTATION_VERSION_NAME = "SMARTBOX_" + CODE_VERSION.replace(".", "")
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
CHARSET_TAG = 0x00080005


class Unparseable(Exception):
    """The input is not a DICOM instance we can read."""


DEFAULT_LIMITS = InflateLimits()


def read(raw: bytes, limits: InflateLimits = DEFAULT_LIMITS) -> Dataset:
    """Parse a Part-10 file (preamble optional) or a bare dataset; raise Unparseable, or
    DecompressionLimit if a deflated dataset would inflate beyond ``limits``."""
    if raw[:4] == b"DICM":  # the marker without its 128-byte preamble
        raw = b"\x00" * 128 + raw
    try:
        ds = read_deflated(raw, limits)
        if ds is None:
            ds = rawread.read(raw)  # the common case, faster; None: pydicom's reader
        if ds is None:
            ds = dcmread(BytesIO(raw), force=True)
    except DecompressionLimit:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure means "unparseable"
        raise Unparseable(type(exc).__name__) from exc
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise Unparseable("no SOP class or instance UID")
    return ds


def transfer_syntax(ds: Dataset) -> UID:
    """The transfer syntax the instance arrived in (guessed from the encoding if no meta)."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian


def _meta_element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2sHL", 2, group_elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, group_elem, vr, len(value)) + value


def _ui(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def file_meta_bytes(sop_class: str, sop_instance: str, ts: str) -> bytes:
    """A fresh File Meta Information group (explicit VR little endian, with its group
    length): nothing of the sender's (AE titles, private info) survives."""
    name = IMPLEMENTATION_VERSION_NAME.encode("ascii")
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", _ui(sop_class)),
            _meta_element(0x0003, b"UI", _ui(sop_instance)),
            _meta_element(0x0010, b"UI", _ui(ts)),
            _meta_element(0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
            _meta_element(0x0013, b"SH", name + b" " if len(name) % 2 else name),
        )
    )
    return _meta_element(0x0000, b"UL", struct.pack("<L", len(body))) + body


@dataclass
class Encoded:
    data: bytes  # the Part-10 file
    scan: bytes  # preamble + meta + dataset, without the pixel data elements
    meta: bytes  # the file meta group (explicit VR little endian)
    body: bytes  # the dataset encoding without pixel data, uncompressed
    implicit: bool
    little: bool
    #: the pixel data element(s) as written (header + value chunks, uncompressed)
    pixels: list[bytes] = field(default_factory=list)


_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
#: VRs written as plain ASCII by pydicom (``write_string``), and text VRs encoded with the
#: instance's character set: identical to ASCII when the text is ASCII and the character
#: set keeps ASCII in G0 (the single-byte ISO 8859 sets, UTF-8, GB18030, GBK).
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR"})
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
_ASCII_SAFE_CHARSETS = frozenset(
    {
        "",
        "iso8859",
        "ISO_IR 6",
        "ISO_IR 100",
        "ISO_IR 101",
        "ISO_IR 109",
        "ISO_IR 110",
        "ISO_IR 144",
        "ISO_IR 127",
        "ISO_IR 126",
        "ISO_IR 138",
        "ISO_IR 148",
        "ISO_IR 166",
        "ISO_IR 203",
        "ISO_IR 192",
        "GB18030",
        "GBK",
    }
)
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}


def _fast_value(elem: DataElement, encodings: object, little: bool) -> bytes | None:
    """The encoded value of a changed element for the common cases (plain strings, ASCII
    text, numbers, empty values), exactly as pydicom would write it; None otherwise."""
    vr, value = elem.VR, elem.value
    if not vr or len(vr) != 2:
        return None  # ambiguous ("US or SS"): pydicom decides, or refuses
    multi = isinstance(value, MultiValue | list | tuple)
    if value is None or value == "" or (multi and not value):
        return b"" if vr != "SQ" else None
    if vr in _NUMBER_FORMATS:
        fmt = ("<" if little else ">") + _NUMBER_FORMATS[vr]
        if type(value) is int or type(value) is float:
            return struct.pack(fmt, value)
        return None
    if vr in _ASCII_VRS:
        pad = b"\x00" if vr == "UI" else b" "
    elif vr in _TEXT_VRS:
        if (encodings if isinstance(encodings, str) else None) not in _ASCII_SAFE_CHARSETS:
            return None
        if vr == "PN":
            if getattr(value, "original_string", None) is not None:
                return None
            value = str(value)
            if "=" in value:
                return None
        pad = b" "
    else:
        return None
    if isinstance(value, str):
        text = value
    elif multi and all(isinstance(v, str) for v in value):
        text = "\\".join(value)
    else:
        return None
    if not text.isascii():
        return None
    data = text.encode("ascii")
    return data + pad if len(data) % 2 else data


class _Encoder:
    """Appends the encoding of elements to a list of byte chunks (joined once at the end)."""

    def __init__(self, implicit: bool, little: bool) -> None:
        self.implicit, self.little = implicit, little
        endian = "<" if little else ">"
        self._implicit_header = struct.Struct(endian + "HHL")
        self._short_header = struct.Struct(endian + "HH2sH")
        self._long_header = struct.Struct(endian + "HH2sHL")

    def marker(self, tag: int, length: int) -> bytes:
        """Item / delimiter header, or an implicit VR element header."""
        return self._implicit_header.pack(tag >> 16, tag & 0xFFFF, length)

    def header(self, tag: int, vr: str | None, length: int) -> bytes | None:
        """Element header, or None when pydicom must decide (no VR, or a value too long
        for a 16-bit length)."""
        if self.implicit:
            return self._implicit_header.pack(tag >> 16, tag & 0xFFFF, length)
        if vr is None or len(vr) != 2:
            return None
        if vr in _LONG_VRS:
            return self._long_header.pack(tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
        if length > 0xFFFF:
            return None
        return self._short_header.pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)

    def _pydicom(self, elem: DataElement | RawDataElement, encodings: object) -> bytes:
        buf = DicomBytesIO()
        buf.is_implicit_VR, buf.is_little_endian = self.implicit, self.little
        write_data_element(buf, elem, encodings)  # type: ignore[arg-type]
        return buf.getvalue()

    def element(
        self, elem: DataElement | RawDataElement, encodings: object, out: list[bytes]
    ) -> int:
        """Append one element; return the number of bytes appended."""
        if isinstance(elem, RawDataElement):
            if elem.value is not None:
                undefined = elem.length == UNDEFINED
                value = elem.value
                head = self.header(int(elem.tag), elem.VR, UNDEFINED if undefined else len(value))
                if head is not None:
                    out.append(head)
                    out.append(value)
                    if undefined:
                        out.append(self.marker(_SEQ_END, 0))
                        return len(head) + len(value) + 8
                    return len(head) + len(value)
        elif elem.VR == "SQ":
            size = self._sequence(elem, encodings, out)
            if size is not None:
                return size
        else:
            encoded = _fast_value(elem, encodings, self.little)
            if encoded is not None:
                head = self.header(int(elem.tag), elem.VR, len(encoded))
                if head is not None:
                    out.append(head)
                    out.append(encoded)
                    return len(head) + len(encoded)
        data = self._pydicom(elem, encodings)
        out.append(data)
        return len(data)

    def _sequence(self, elem: DataElement, encodings: object, out: list[bytes]) -> int | None:
        """A sequence assembled from its items, as pydicom's writer would; None if an item
        needs pydicom's re-encoding (new item or changed character set)."""
        items: list[tuple[Dataset, list[bytes], int]] = []
        for item in elem.value or ():
            if (
                item.original_encoding != (self.implicit, self.little)
                or item.original_character_set != item._character_set
            ) and not _all_decoded(item):
                return None  # pydicom would re-encode its raw elements
            chunks: list[bytes] = []
            item_enc = item.get(CHARSET_TAG).value if CHARSET_TAG in item else encodings
            size = self.dataset(item, item_enc, chunks, top=False)
            items.append((item, chunks, size))
        content = 0
        parts: list[bytes] = []
        for item, chunks, size in items:
            if getattr(item, "is_undefined_length_sequence_item", False):
                parts.append(self.marker(_ITEM, UNDEFINED))
                parts.extend(chunks)
                parts.append(self.marker(_ITEM_END, 0))
                content += size + 16
            else:
                parts.append(self.marker(_ITEM, size))
                parts.extend(chunks)
                content += size + 8
        undefined = elem.is_undefined_length
        head = self.header(int(elem.tag), "SQ", UNDEFINED if undefined else content)
        assert head is not None  # noqa: S101 - SQ always has a 32-bit length
        out.append(head)
        out.extend(parts)
        if undefined:
            out.append(self.marker(_SEQ_END, 0))
            return len(head) + content + 8
        return len(head) + content

    def dataset(self, ds: Dataset, encodings: object, out: list[bytes], top: bool) -> int:
        size = 0
        for tag in sorted(ds.keys()):
            if not tag & 0xFFFF and (top or tag >> 16 > 6):
                continue  # group lengths are retired (PS3.5 7.2)
            size += self.element(_item(ds, tag), encodings, out)
        return size


def _item(ds: Dataset, tag: int) -> DataElement | RawDataElement:
    """``ds.get_item(tag)`` for a tag of ``ds.keys()``, without its key conversion (a hot
    loop: ~200 elements an instance); a deferred raw value is still read by pydicom."""
    elem = ds._dict[tag]  # type: ignore[index]
    if elem.value is None and isinstance(elem, RawDataElement):
        return ds.get_item(tag)
    return elem


def _all_decoded(item: Dataset) -> bool:
    """True if every element of `item` is decoded with an unambiguous VR (a new item: what
    pydicom's re-encoding would do to it is what we do)."""
    for tag in item.keys():
        elem = item.get_item(tag)
        if not isinstance(elem, DataElement) or not elem.VR or len(elem.VR) != 2:
            return False
    return True


def write(ds: Dataset, ts: UID) -> Encoded:
    """Encode `ds` as a Part-10 file in transfer syntax `ts`, with a fresh file meta."""
    implicit = ts == ImplicitVRLittleEndian
    little = ts != ExplicitVRBigEndian
    if not ts.is_transfer_syntax:
        read_implicit, read_little = ds.original_encoding
        implicit, little = bool(read_implicit), read_little is not False

    meta = file_meta_bytes(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ts))
    head = b"\x00" * 128 + b"DICM" + meta
    enc = _Encoder(implicit, little)
    body: list[bytes] = []
    pixels: list[bytes] = []
    tail: list[bytes] = []  # non-pixel elements after the pixels (normally none survive)
    charset = ds.get("SpecificCharacterSet", "iso8859")
    after_pixels = False
    for tag in sorted(ds.keys()):
        t = int(tag)  # int, not BaseTag: its == (set membership below) is Python code
        if not t & 0xFFFF:
            continue
        elem = _item(ds, tag)
        if t in PIXEL_TAGS:
            after_pixels = True
            enc.element(elem, charset, pixels)
        elif after_pixels:
            start = len(pixels)
            enc.element(elem, charset, pixels)
            tail.extend(pixels[start:])
        else:
            enc.element(elem, charset, body)

    body_bytes = b"".join(body)
    if ts == DeflatedExplicitVRLittleEndian:
        # Pixel data is the last element, so body + pixels is the dataset in tag order.
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        deflated = compressor.compress(body_bytes)
        for chunk in pixels:
            deflated += compressor.compress(chunk)
        deflated += compressor.flush()
        if len(deflated) % 2:
            deflated += b"\x00"
        data = head + deflated
    else:
        data = b"".join([head, body_bytes, *pixels])
    tail_bytes = b"".join(tail)
    return Encoded(
        data,
        head + body_bytes + tail_bytes,
        meta,
        body_bytes + tail_bytes,
        implicit,
        little,
        pixels,
    )
