"""The verification gate reads native pixel data too: its length, and identifiers in its bytes."""

from __future__ import annotations

import random
import struct

import pytest
from conftest import NHS, ct_dataset, to_bytes
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from consumers.deid import Deidentifier

ACCESSION, MRN = "ACC99887766", "RTK00123456"


def with_pixels(pixels: bytes, bits_stored: int = 16) -> Dataset:
    """A CT whose pixel cells are all sample (16 of 16 bits: nothing is cleared, so only the
    search stands between text in the pixel bytes and staging)."""
    ds = ct_dataset()
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.OtherPatientIDs = MRN
    assert len(pixels) == len(ds.PixelData)
    ds.PixelData = pixels
    return ds


def planted(text: bytes, at: int = 100, size: int = 16 * 16 * 2) -> bytes:
    """12-bit CT-like pixels with ``text`` written over some of them."""
    rng = random.Random(5)
    flat = b"".join(rng.getrandbits(12).to_bytes(2, "little") for _ in range(size // 2))
    return flat[:at] + text + flat[at + len(text) :]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (ACCESSION.encode(), "accession_number"),
        (ACCESSION.lower().encode(), "accession_number"),
        (MRN.encode(), "other_patient_id"),
        (NHS.encode(), "nhs_number"),
        (b"FEATHERSTONEHAUGH", "person_name"),
        (b"\x00\x01ACC99887766\xff", "accession_number"),
    ],
)
@pytest.mark.parametrize("syntax", ["explicit", "implicit", "big", "deflated"])
def test_identifiers_in_native_pixel_bytes_hold_the_instance_back(
    deid: Deidentifier, text: bytes, kind: str, syntax: str
) -> None:
    ds = with_pixels(planted(text))
    if syntax == "deflated":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    result = deid.process(to_bytes(ds, implicit=syntax == "implicit", little=syntax != "big"))
    assert (result.ok, result.reason, result.detail) == (
        False,
        "verification_failed:pixel_data",
        kind,
    )


def test_eight_bit_pixels_are_searched_too(deid: Deidentifier) -> None:
    ds = ct_dataset(rows=32, cols=32)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = bytes(100) + b"Featherstonehaugh" + bytes(32 * 32 - 117)
    result = deid.process(to_bytes(ds))
    assert (result.reason, result.detail) == ("verification_failed:pixel_data", "person_name")


def test_ordinary_pixels_and_short_values_pass(deid: Deidentifier) -> None:
    rng = random.Random(9)
    for _ in range(5):  # uniform noise: random bytes must not look like an identifier
        assert deid.process(to_bytes(with_pixels(rng.randbytes(16 * 16 * 2)))).ok
    # below MIN_BYTES (6) a value would match image content by chance: not searched
    assert deid.process(to_bytes(with_pixels(planted(b"S1234")))).ok


def test_request_attribute_bytes_swallowed_into_pixel_data_are_held_back(
    deid: Deidentifier,
) -> None:
    """What the fault run found: a wrong length makes the reader take the following
    elements (an accession number, an MRN) for Pixel Data."""
    ds = ct_dataset()
    raw = to_bytes(ds)
    at = raw.rindex(struct.pack("<HH", 0x7FE0, 0x0010))
    tail = b"\x08\x00\x50\x00SH\x0c\x00ACC99887766 \x10\x00\x20\x00LO\x0c\x00RTK00123456 "
    length = struct.unpack_from("<L", raw, at + 8)[0] + len(tail)
    raw = raw[: at + 8] + struct.pack("<L", length) + raw[at + 12 :] + tail
    result = deid.process(raw)
    assert not result.ok and result.data is None
    assert result.reason in ("pixel_data_length_mismatch", "verification_failed:pixel_data")


@pytest.mark.parametrize(
    ("attrs", "length", "ok"),
    [
        ({}, 16 * 16 * 2, True),
        ({}, 16 * 16 * 2 - 2, False),
        ({}, 16 * 16 * 2 + 2, False),
        ({"rows": 15, "cols": 15, "bits": 8}, 225 + 1, True),  # odd: one pad byte
        ({"rows": 15, "cols": 15, "bits": 8}, 225 + 3, False),
        ({"frames": 3}, 16 * 16 * 2 * 3, True),
        ({"frames": 3}, 16 * 16 * 2 * 2, False),
        ({"samples": 3, "bits": 8, "photometric": "RGB"}, 16 * 16 * 3, True),
        ({"samples": 3, "bits": 8, "photometric": "YBR_FULL_422"}, 16 * 16 * 2, True),
        ({"bits": 1}, 16 * 16 // 8, True),  # 1-bit: packed
        ({"rows": None}, 16 * 16 * 2, False),  # no Rows: the length means nothing
    ],
)
def test_native_pixel_data_must_fit_its_image_attributes(
    deid: Deidentifier, attrs: dict, length: int, ok: bool
) -> None:
    ds = ct_dataset(frames=attrs.get("frames", 1))
    if "rows" in attrs:
        if attrs["rows"] is None:
            del ds.Rows
        else:
            ds.Rows, ds.Columns = attrs["rows"], attrs["cols"]
    if "bits" in attrs:
        ds.BitsAllocated = ds.BitsStored = attrs["bits"]
        ds.HighBit = attrs["bits"] - 1
    if "samples" in attrs:
        ds.SamplesPerPixel, ds.PlanarConfiguration = attrs["samples"], 0
        ds.PhotometricInterpretation = attrs["photometric"]
    ds.PixelData = bytes((i * 7) % 251 for i in range(length))
    result = deid.process(to_bytes(ds))
    assert result.ok == ok, result.reason
    if not ok:
        assert result.reason == "pixel_data_length_mismatch"
