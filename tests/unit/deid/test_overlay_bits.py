"""Overlay graphics in the bits of Pixel Data outside Bits Stored: cleared in native pixel
data (and nothing else changes), held back in compressed pixel data."""

from __future__ import annotations

import io
import struct

import pydicom
import pytest
from conftest import ct_dataset, to_bytes
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGLosslessSV1, RLELossless

from consumers.deid import Deidentifier

ROWS = COLS = 16


def glyph(r: int, c: int) -> bool:
    """Where the overlay draws: a block letter across the image (stands for a name)."""
    return (2 <= r <= 12 and c in (3, 4)) or (r in (2, 7) and 3 <= c <= 10)


def image(bits_stored: int, high_bit: int, signed: bool, overlay_bit: int, size: int) -> tuple:
    """(cells as ints, the same with the overlay drawn in ``overlay_bit``)."""
    lsb = high_bit - bits_stored + 1
    plain, drawn = [], []
    for i in range(ROWS * COLS):
        r, c = divmod(i, COLS)
        value = (i * 37) % (1 << bits_stored)
        if signed and value >= 1 << (bits_stored - 1):  # negative: sign extended
            value -= 1 << bits_stored
        cell = (value << lsb) & ((1 << (8 * size)) - 1)
        if signed and value < 0:
            cell |= ((1 << (8 * size)) - 1) & ~((1 << (high_bit + 1)) - 1)
        plain.append(cell)
        mark = 1 << overlay_bit if glyph(r, c) else 0
        drawn.append(cell ^ mark if signed and value < 0 else cell | mark)
    return plain, drawn


def pack(cells: list[int], size: int, little: bool) -> bytes:
    fmt = ("<" if little else ">") + {1: "B", 2: "H", 4: "I"}[size] * len(cells)
    return struct.pack(fmt, *cells)


LAYOUTS = [  # (bits allocated, stored, high bit, signed, overlay bit)
    (16, 12, 11, False, 12),
    (16, 12, 11, False, 15),
    (16, 12, 15, False, 0),  # the sample in the high bits: overlay below it
    (16, 12, 11, True, 13),
    (16, 10, 9, False, 14),
    (16, 8, 7, True, 12),  # signed, sign bit in the low byte, whole high byte above it
    (8, 6, 5, False, 7),
    (32, 24, 23, False, 28),
]


@pytest.mark.parametrize(("allocated", "stored", "high", "signed", "bit"), LAYOUTS)
@pytest.mark.parametrize("syntax", ["explicit", "implicit", "big", "deflated"])
def test_bits_outside_bits_stored_are_cleared_and_nothing_else_changes(
    deid: Deidentifier,
    allocated: int,
    stored: int,
    high: int,
    signed: bool,
    bit: int,
    syntax: str,
) -> None:
    size = allocated // 8
    little = syntax != "big"
    plain, drawn = image(stored, high, signed, bit, size)
    ds = ct_dataset(rows=ROWS, cols=COLS)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, high
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pack(drawn, size, little)
    ds.add_new(0x60000010, "US", ROWS)  # the overlay's own attributes (removed by the table)
    ds.add_new(0x60000100, "US", allocated)
    ds.add_new(0x60000102, "US", bit)
    if syntax == "deflated":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    result = deid.process(to_bytes(ds, implicit=syntax == "implicit", little=little))
    assert result.ok, result.reason
    out = pydicom.dcmread(io.BytesIO(result.data))
    assert out.PixelData == pack(plain, size, little)  # byte for byte the image without it
    marked = sum(glyph(*divmod(i, COLS)) for i in range(ROWS * COLS))
    assert result.pixel_bits_cleared == marked
    assert f"OVERLAY BITS CLEARED {marked}" in out.DeidentificationMethod
    assert not any(0x6000 <= e.tag.group <= 0x60FF for e in out)


def test_clean_pixels_are_written_as_received(deid: Deidentifier) -> None:
    ds = ct_dataset(rows=ROWS, cols=COLS)
    plain, _ = image(12, 11, False, 12, 2)
    ds.PixelData = pack(plain, 2, True)
    result = deid.process(to_bytes(ds))
    out = pydicom.dcmread(io.BytesIO(result.data))
    assert result.pixel_bits_cleared == 0 and out.PixelData == ds.PixelData
    assert not any("OVERLAY" in v for v in out.DeidentificationMethod)


def test_multi_frame_every_frame_is_cleared(deid: Deidentifier) -> None:
    plain, drawn = image(12, 11, False, 12, 2)
    ds = ct_dataset(rows=ROWS, cols=COLS, frames=3)
    ds.PixelData = pack(drawn * 3, 2, True)
    result = deid.process(to_bytes(ds))
    assert pydicom.dcmread(io.BytesIO(result.data)).PixelData == pack(plain * 3, 2, True)
    assert result.pixel_bits_cleared == 3 * sum(glyph(*divmod(i, COLS)) for i in range(ROWS * COLS))


def jpeg(precision: int) -> bytes:
    """The head of a JPEG lossless codestream: SOI, SOF3 with `precision`, SOS, EOI."""
    sof = struct.pack(">BBHBHHB", 0xFF, 0xC3, 11, precision, ROWS, COLS, 1) + b"\x01\x11\x00"
    return (
        b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x01\x00\x00" + b"\x00" * 6 + b"\xff\xd9"
    )


def rle(planes: list[bytes]) -> bytes:
    """An RLE Lossless frame of literal runs (one segment per byte plane, MSB first)."""
    segments = []
    for plane in planes:
        seg = b"".join(
            bytes([len(plane[i : i + 128]) - 1]) + plane[i : i + 128]
            for i in range(0, len(plane), 128)
        )
        segments.append(seg + b"\x00" * (len(seg) % 2))
    offsets, at = [], 64
    for seg in segments:
        offsets.append(at)
        at += len(seg)
    header = struct.pack("<16L", len(segments), *offsets, *[0] * (15 - len(segments)))
    return header + b"".join(segments)


def compressed(frame: bytes, syntax: str, overlay: bool = False) -> bytes:
    ds = ct_dataset(rows=ROWS, cols=COLS)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if overlay:
        ds.add_new(0x60000010, "US", ROWS)
        ds.add_new(0x60000102, "US", 0)
        ds.add_new(0x60003000, "OW", bytes(ROWS * COLS // 8))
    return to_bytes(ds)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (lambda: compressed(jpeg(12), JPEGLosslessSV1), None),
        (lambda: compressed(jpeg(16), JPEGLosslessSV1), "overlay_in_compressed_pixels"),
        (lambda: compressed(jpeg(12), JPEGLosslessSV1, True), "overlay_in_compressed_pixels"),
        (lambda: compressed(rle([bytes(256), bytes(256)]), RLELossless), None),
        (
            lambda: compressed(rle([b"\x10" * 256, bytes(256)]), RLELossless),
            "overlay_in_compressed_pixels",
        ),
        (
            lambda: compressed(b"\x00\x01not a codestream", JPEGLosslessSV1),
            "overlay_in_compressed_pixels",
        ),
    ],
)
def test_compressed_pixels_that_may_hold_overlay_bits_are_held_back(
    deid: Deidentifier, raw, reason: str | None
) -> None:
    result = deid.process(raw())
    assert result.reason == reason, result.reason


def test_overlay_embedded_inside_the_stored_bits_is_held_back(deid: Deidentifier) -> None:
    ds = ct_dataset(rows=ROWS, cols=COLS)
    ds.BitsStored, ds.HighBit = 16, 15
    ds.add_new(0x60000010, "US", ROWS)
    ds.add_new(0x60000100, "US", 16)
    ds.add_new(0x60000102, "US", 15)  # the overlay *is* the top bit of the image
    assert deid.process(to_bytes(ds)).reason == "overlay_in_stored_bits"


@pytest.mark.parametrize(("stored", "high"), [(20, 19), (12, 16), (12, 3)])
def test_contradictory_bit_attributes_are_held_back(
    deid: Deidentifier, stored: int, high: int
) -> None:
    ds = ct_dataset(rows=ROWS, cols=COLS)
    ds.BitsStored, ds.HighBit = stored, high
    assert deid.process(to_bytes(ds)).reason == "pixel_bit_layout_invalid"


def reference_clear(
    data: bytes, allocated: int, stored: int, high: int, signed: bool, little: bool
) -> tuple[bytes, int]:
    """The rule of ``pixel_bits``, one cell at a time in plain Python (the oracle)."""
    size = allocated // 8
    order = "little" if little else "big"
    lsb = high - stored + 1
    keep = ((1 << stored) - 1) << lsb
    above = ((1 << allocated) - 1) & ~((1 << (high + 1)) - 1)
    out, count = bytearray(), 0
    whole = len(data) - len(data) % size
    for i in range(0, whole, size):
        cell = int.from_bytes(data[i : i + size], order)
        new = cell & keep
        if signed and cell >> high & 1:
            new |= above
        count += new != cell
        out += new.to_bytes(size, order)
    return bytes(out + data[whole:]), count


@pytest.mark.parametrize(("allocated", "stored", "high", "signed", "bit"), LAYOUTS)
@pytest.mark.parametrize("little", [True, False])
def test_clearing_noise_and_clean_cells_matches_the_rule_cell_by_cell(
    allocated: int, stored: int, high: int, signed: bool, bit: int, little: bool
) -> None:
    """Random cells (every spare bit set in some pixels), the same cells already clean, and a
    trailing partial cell: same bytes and count as the one-cell-at-a-time rule."""
    import random

    from consumers.deid.pixel_bits import BitLayout, clear

    layout = BitLayout(allocated, stored, high, signed, little)
    rng = random.Random(allocated * 1000 + stored * 10 + high)
    size = allocated // 8
    noise = rng.randbytes(size * 4099)
    expected, count = reference_clear(noise, allocated, stored, high, signed, little)
    assert count > 0
    new, n = clear(noise, layout)
    assert (bytes(new), n) == (expected, count)
    assert clear(expected, layout) == (expected, 0)  # clean: returned as it is
    if size > 1:
        odd = noise + b"\x01"
        assert (bytes(clear(odd, layout)[0]), clear(odd, layout)[1]) == reference_clear(
            odd, allocated, stored, high, signed, little
        )
