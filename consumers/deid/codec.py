"""Reading what a trust sent, and writing the result in the same transfer syntax.

Writing is split around the pixel data so the verification gate can scan every byte of the
output except the pixels, without encoding anything twice. Pixel data is written from the
bytes as read: never decoded, never decompressed.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from .table import CODE_VERSION

#: Identifies this de-identifier in the file meta (stable, derived, under 2.25).
IMPLEMENTATION_CLASS_UID = "2.25." + str(
    int.from_bytes(hashlib.sha256(b"smartbox-deid implementation").digest()[:16], "big")
)
IMPLEMENTATION_VERSION_NAME = "SMARTBOX_" + CODE_VERSION.replace(".", "")
PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)


class Unparseable(Exception):
    """The input is not a DICOM instance we can read."""


def read(raw: bytes) -> Dataset:
    """Parse a Part-10 file (preamble optional) or a bare dataset; raise Unparseable."""
    if raw[:4] == b"DICM":  # the marker without its 128-byte preamble
        raw = b"\x00" * 128 + raw
    try:
        ds = dcmread(BytesIO(raw), force=True)
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


def build_file_meta(ds: Dataset, ts: UID) -> FileMetaDataset:
    """A fresh file meta: nothing of the sender's (AE titles, private info) survives."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


@dataclass
class Encoded:
    data: bytes  # the Part-10 file
    scan: bytes  # preamble + meta + dataset, without the pixel data elements
    body: bytes  # the dataset encoding without pixel data, uncompressed
    implicit: bool
    little: bool


_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)


def _write_raw(out: DicomBytesIO, elem: object, implicit: bool, little: bool) -> bool:
    """Copy an element still in its received encoding straight through; False if it is not
    such an element (then pydicom's writer handles it). Same bytes, far less overhead."""
    if not isinstance(elem, RawDataElement) or elem.value is None:
        return False
    vr, value = elem.VR, elem.value
    undefined = elem.length == 0xFFFFFFFF
    length = 0xFFFFFFFF if undefined else len(value)
    endian = "<" if little else ">"
    tag = int(elem.tag)
    if implicit:
        header = struct.pack(endian + "HHL", tag >> 16, tag & 0xFFFF, length)
    elif vr is None:
        return False
    elif vr in _LONG_VRS:
        header = struct.pack(endian + "HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    elif undefined or length > 0xFFFF:
        return False
    else:
        header = struct.pack(endian + "HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)
    out.write(header)
    out.write(value)
    if undefined:
        out.write(struct.pack(endian + "HHL", 0xFFFE, 0xE0DD, 0))
    return True


def write(ds: Dataset, meta: FileMetaDataset) -> Encoded:
    """Encode `ds` with `meta` in ``meta.TransferSyntaxUID``."""
    ts = UID(str(meta.TransferSyntaxUID))
    implicit = ts == ImplicitVRLittleEndian
    little = ts != ExplicitVRBigEndian
    if not ts.is_transfer_syntax:
        implicit, little = ds.original_encoding
        implicit, little = bool(implicit), little is not False

    head = DicomBytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)

    body = DicomBytesIO()
    body.is_implicit_VR = implicit
    body.is_little_endian = little
    pixels = DicomBytesIO()
    pixels.is_implicit_VR = implicit
    pixels.is_little_endian = little
    tail = DicomBytesIO()  # non-pixel elements after the pixels (normally none survive)
    tail.is_implicit_VR = implicit
    tail.is_little_endian = little
    encodings = ds.get("SpecificCharacterSet", "iso8859")
    after_pixels = False
    for tag in sorted(ds.keys()):
        if tag.element == 0:
            continue
        elem = ds.get_item(tag)
        if tag in PIXEL_TAGS:
            after_pixels = True
            targets = [pixels]
        elif after_pixels:
            targets = [pixels, tail]
        else:
            targets = [body]
        for target in targets:
            if not _write_raw(target, elem, implicit, little):
                write_data_element(target, elem, encodings)

    head_bytes, body_bytes = head.getvalue(), body.getvalue()
    pixel_bytes = pixels.getvalue()
    if ts == DeflatedExplicitVRLittleEndian:
        # Pixel data is the last element, so body + pixels is the dataset in tag order.
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        deflated = compressor.compress(body_bytes + pixel_bytes) + compressor.flush()
        if len(deflated) % 2:
            deflated += b"\x00"
        data = head_bytes + deflated
    else:
        data = head_bytes + body_bytes + pixel_bytes
    tail_bytes = tail.getvalue()
    return Encoded(
        data, head_bytes + body_bytes + tail_bytes, body_bytes + tail_bytes, implicit, little
    )
