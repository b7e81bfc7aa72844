"""Deflate bombs: a deflated instance is inflated within bounds, never whole on trust."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import pydicom
import pytest
from conftest import KEY, PLANTED, ct_dataset, planted_dataset, to_bytes, write_trust
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from consumers.deid import Deidentifier, DeidPolicy, InflateLimits
from consumers.deid.inflate import DecompressionLimit, inflate
from smartbox.app.deidentify_cli import policy_for
from smartbox.errors import ConfigError

MIB = 1 << 20


def deflated(ds: pydicom.Dataset) -> bytes:
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return to_bytes(ds)


def bomb(zeros: int) -> bytes:
    """A deflated CT whose Pixel Data is ``zeros`` zero bytes: ~1,000x smaller on the wire."""
    ds = ct_dataset()
    del ds.PixelData
    head = io.BytesIO()
    buf = pydicom.filebase.DicomFileLike(head)
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    meta = deflated(ct_dataset())  # a deflated file: its meta, up to the dataset
    meta_end = 132 + 12 + struct.unpack_from("<L", meta, 140)[0]
    pixel_header = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, zeros)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [meta[:meta_end], packer.compress(head.getvalue() + pixel_header)]
    chunk = bytes(MIB)
    for _ in range(zeros // MIB):
        out.append(packer.compress(chunk))
    out.append(packer.flush())
    return b"".join(out)


def test_a_deflate_bomb_is_held_back_with_bounded_memory(deid: Deidentifier) -> None:
    data = bomb(128 * MIB)
    assert len(data) < 200 * 1024  # 128 MiB of zeros on the wire in ~130 KiB
    tracemalloc.start()
    try:
        result = deid.process(data)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (result.ok, result.reason) == (False, "decompression_limit")
    # the ratio check stops at the floor (16 MiB) plus one step, nowhere near 128 MiB
    assert peak < 40 * MIB, f"peak {peak / MIB:.0f} MiB"


def test_the_absolute_limit_holds_whatever_the_ratio() -> None:
    limits = InflateLimits(max_bytes=2 * MIB, max_ratio=100_000, ratio_floor=MIB)
    deid = Deidentifier(*_key_policy(limits))
    assert deid.process(bomb(8 * MIB)).reason == "decompression_limit"
    assert deid.process(deflated(ct_dataset(rows=64, cols=64))).ok  # 8 KiB is fine


def _key_policy(limits: InflateLimits) -> tuple:
    return KEY, DeidPolicy(trust_code="RTK", inflate=limits)


def test_a_legitimate_deflated_instance_still_de_identifies(deid: Deidentifier) -> None:
    source = planted_dataset()
    pixels = source.PixelData
    result = deid.process(deflated(source))
    assert result.ok, result.reason
    assert result.data is not None
    out = pydicom.dcmread(io.BytesIO(result.data))
    assert out.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert out.PatientIdentityRemoved == "YES"
    assert out.PixelData == pixels
    text = out.to_json()
    for value in PLANTED:
        assert value not in text


def test_small_very_compressible_instances_pass_under_the_floor(deid: Deidentifier) -> None:
    ds = ct_dataset(rows=256, cols=256)
    ds.PixelData = bytes(256 * 256 * 2)  # blank: ~1000x compressible, but only 128 KiB
    assert deid.process(deflated(ds)).ok


def test_a_truncated_deflate_stream_is_unparseable(deid: Deidentifier) -> None:
    data = deflated(ct_dataset(rows=64, cols=64))
    assert deid.process(data[: len(data) - 100]).reason == "unparseable"


def test_inflate_stops_on_the_ratio_once_past_the_floor() -> None:
    stream = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = stream.compress(bytes(8 * MIB)) + stream.flush()
    with pytest.raises(DecompressionLimit):
        inflate(data, InflateLimits(max_bytes=64 * MIB, max_ratio=50, ratio_floor=MIB))
    assert len(inflate(data, InflateLimits())) == 8 * MIB


def test_the_trust_file_sets_the_limits_for_smartbox_deidentify(tmp_path: Path) -> None:
    write_trust(tmp_path, "RTK", head="max_inflated_bytes = 2097152\nmax_inflate_ratio = 50\n")
    policy = policy_for("RTK", tmp_path)
    assert (policy.inflate.max_bytes, policy.inflate.max_ratio) == (2 * MIB, 50)
    assert policy_for(None, tmp_path).inflate == InflateLimits()
    assert Deidentifier(KEY, policy).process(bomb(4 * MIB)).reason == "decompression_limit"
    with pytest.raises(ConfigError):  # the shared InflateLimits (smartbox.inflate)
        InflateLimits(max_bytes=MIB, max_ratio=1)
