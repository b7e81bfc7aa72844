"""Blanking the rectangles of a mask rule in native (uncompressed) pixel data.

Every frame, every sample plane. The fill is the Pixel Padding Value when the instance has
one, else the smallest stored value (0 unsigned, -2^(BitsStored-1) signed): a uniform
region, whatever the display. Compressed pixel data is never decompressed: such an
instance stays held back (``mask_rule_compressed``), as does anything whose layout is not
plain (``mask_rule_unsupported``: 1-bit, 4:2:2 subsampled colour, float pixels, size
mismatch).
"""

from __future__ import annotations

import struct

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from .config import MaskRule
from .reasons import Reason

PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
_SUBSAMPLED = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"})


def _int(ds: Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    return int(value[0] if isinstance(value, list | tuple) else value)


def _fill(ds: Dataset, bytes_per_sample: int, little: bool) -> bytes:
    endian = "<" if little else ">"
    fmt = {1: "b", 2: "h", 4: "l"}[bytes_per_sample]
    if "PixelPaddingValue" in ds and _int(ds, "SamplesPerPixel", 1) == 1:
        value = _int(ds, "PixelPaddingValue", 0)
    elif _int(ds, "PixelRepresentation", 0) == 1:
        value = -(1 << (_int(ds, "BitsStored", bytes_per_sample * 8) - 1))
    else:
        value = 0
    return struct.pack(endian + fmt.upper() if value >= 0 else endian + fmt, value)


def apply_mask(ds: Dataset, rule: MaskRule, ts: UID) -> Reason | None:
    """Blank `rule`'s rectangles in `ds`'s pixel data in place and set Burned In Annotation
    to NO; return a hold-back reason instead if that cannot be done safely."""
    if PIXEL_DATA not in ds:
        return Reason.MASK_RULE_UNSUPPORTED
    raw = ds.get_item(PIXEL_DATA)
    if (ts.is_transfer_syntax and ts.is_encapsulated) or (
        isinstance(raw, RawDataElement) and raw.length == UNDEFINED
    ):
        return Reason.MASK_RULE_COMPRESSED
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    samples = _int(ds, "SamplesPerPixel", 1)
    bits = _int(ds, "BitsAllocated", 0)
    frames = max(_int(ds, "NumberOfFrames", 1), 1)
    planar = _int(ds, "PlanarConfiguration", 0) if samples > 1 else 0
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if bits not in (8, 16, 32) or photometric in _SUBSAMPLED or samples not in (1, 3, 4):
        return Reason.MASK_RULE_UNSUPPORTED
    if (rows, cols) != (rule.rows, rule.columns):
        return Reason.MASK_RULE_UNSUPPORTED
    size = bits // 8
    frame_bytes = rows * cols * samples * size
    data = ds.PixelData
    if not isinstance(data, bytes | bytearray) or len(data) < frames * frame_bytes:
        return Reason.MASK_RULE_UNSUPPORTED
    little = ts != "1.2.840.10008.1.2.2"
    sample_fill = _fill(ds, size, little)
    pixels = bytearray(data)
    for frame in range(frames):
        base = frame * frame_bytes
        for rect in rule.rectangles:
            width = rect.width
            if planar:
                plane_bytes = rows * cols * size
                run = sample_fill * width
                for plane in range(samples):
                    start = base + plane * plane_bytes
                    for y in range(rect.y, rect.y + rect.height):
                        at = start + (y * cols + rect.x) * size
                        pixels[at : at + len(run)] = run
            else:
                run = sample_fill * (width * samples)
                for y in range(rect.y, rect.y + rect.height):
                    at = base + (y * cols + rect.x) * samples * size
                    pixels[at : at + len(run)] = run
    ds.PixelData = bytes(pixels)
    ds.BurnedInAnnotation = "NO"
    return None
