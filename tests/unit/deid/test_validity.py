"""Output stays valid (dciodvfy: no new errors), pixel data is byte-identical, every
transfer syntax is kept as received."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from conftest import ct_dataset, planted_dataset, to_bytes
from corpus import BUNDLED, bundled_bytes
from helpers.util import missing

from consumers.deid import Deidentifier

DCIODVFY = shutil.which("dciodvfy") or (
    "/usr/bin/dciodvfy" if Path("/usr/bin/dciodvfy").exists() else None
)
_NUMBERS = re.compile(r"[0-9][0-9.]*")


def _corpus() -> list[tuple[str, bytes]]:
    items = [
        ("synth_ct", to_bytes(ct_dataset())),
        ("planted_ct", to_bytes(planted_dataset())),
        ("synth_ct_implicit", to_bytes(ct_dataset(), implicit=True)),
        ("synth_ct_big_endian", to_bytes(ct_dataset(), little=False)),
    ]
    for name, _why in BUNDLED:
        raw = bundled_bytes(name)
        if raw is not None:
            items.append((name, raw))
    return items


CORPUS = _corpus()


def _errors(path: Path) -> set[str]:
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    # UIDs, dates and numbers legitimately change; compare the shape of each error
    return {_NUMBERS.sub("#", line) for line in lines if line.startswith("Error")}


@pytest.mark.parametrize(("name", "raw"), CORPUS, ids=[n for n, _ in CORPUS])
def test_dciodvfy_no_new_errors(name: str, raw: bytes, deid: Deidentifier, tmp_path) -> None:
    if DCIODVFY is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dciodvfy (dicom3tools) is required in CI")
        missing("dciodvfy (dicom3tools) not installed: apt-get install dicom3tools")
    result = deid.process(raw)
    assert result.ok, result.reason
    src, out = tmp_path / "in.dcm", tmp_path / "out.dcm"
    src.write_bytes(raw)
    out.write_bytes(result.data)
    new = _errors(out) - _errors(src)
    assert not new, f"{name}: new dciodvfy errors:\n" + "\n".join(sorted(new))


@pytest.mark.parametrize(("name", "raw"), CORPUS, ids=[n for n, _ in CORPUS])
def test_pixels_and_syntax_unchanged(name: str, raw: bytes, deid: Deidentifier) -> None:
    result = deid.process(raw)
    assert result.ok, result.reason
    src = pydicom.dcmread(io.BytesIO(raw))
    out = pydicom.dcmread(io.BytesIO(result.data))
    assert out.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
    for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if kw in src:
            assert out[kw].value == src[kw].value, kw
    for src_item, out_item in zip(
        src.get("WaveformSequence", []), out.get("WaveformSequence", []), strict=True
    ):
        assert out_item.WaveformData == src_item.WaveformData
    assert out.get("NumberOfFrames") == src.get("NumberOfFrames")
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def test_pixel_bytes_identical_in_file(deid: Deidentifier) -> None:
    """The encoded pixel element (not just the decoded value) is copied verbatim."""
    raw = bundled_bytes("MR_small_RLE.dcm") or to_bytes(ct_dataset(frames=3))
    src = pydicom.dcmread(io.BytesIO(raw))
    result = deid.process(raw)
    assert result.data is not None and bytes(src.PixelData) in result.data
    multi = to_bytes(ct_dataset(frames=4))
    out = deid.process(multi)
    assert out.ok and pydicom.dcmread(io.BytesIO(multi)).PixelData in out.data


def test_dciodvfy_no_new_errors_after_masking(tmp_path) -> None:
    """A masked ultrasound cine (pixel data rewritten, receipts added) stays as valid as
    it came in."""
    if DCIODVFY is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dciodvfy (dicom3tools) is required in CI")
        missing("dciodvfy (dicom3tools) not installed: apt-get install dicom3tools")
    from conftest import KEY
    from test_masking import rule, us_dataset

    from consumers.deid import DeidPolicy

    raw = to_bytes(us_dataset())
    result = Deidentifier(KEY, DeidPolicy(trust_code="RTK", mask_rules=(rule(),))).process(raw)
    assert result.ok and result.mask_rule, result.reason
    src, out = tmp_path / "in.dcm", tmp_path / "out.dcm"
    src.write_bytes(raw)
    out.write_bytes(result.data)
    new = _errors(out) - _errors(src)
    assert not new, "new dciodvfy errors after masking:\n" + "\n".join(sorted(new))
