"""Optional OCR verifier: read burned-in text back out of the pixels with Tesseract.

Off by default (``DeidPolicy.ocr``); needs the ``tesseract`` executable (Debian package
``tesseract-ocr``), checked when the ``Deidentifier`` is built. Runs on the *output* pixels
(after masking) of native grayscale or 8-bit colour images; up to ``ocr_max_frames`` frames,
evenly spaced. Frames are handed to Tesseract as PGM/PPM written here (no imaging library
needed). Compressed pixel data is never decompressed, so it is not read (the pixel gate and
mask rules are the defence there).

Verdicts: a word of 3+ characters equal to one of the source instance's identifiers
(``ocr_match="identifiers"``), or any word of 3+ letters (``"any_text"``), holds the instance
back as ``verification_failed:ocr_text``; Tesseract failing or timing out holds it back as
``verification_failed:ocr_error`` (fail closed).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from array import array
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian

from .identifiers import Identifiers
from .reasons import Reason

TIMEOUT_S = 60
_WORD = re.compile(r"[^\W\d_]{3,}")


def _int(ds: Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword)
    return default if value is None or value == "" else int(value)


def _frame_indices(frames: int, limit: int) -> list[int]:
    if frames <= limit:
        return list(range(frames))
    if limit == 1:
        return [frames // 2]
    return sorted({round(i * (frames - 1) / (limit - 1)) for i in range(limit)})


def _gray8(frame: bytes, bits: int, signed: bool, little: bool) -> bytes:
    """Samples of one grayscale frame scaled to 0-255 (min-max)."""
    if bits == 8:
        return frame.translate(bytes((b + 128) & 0xFF for b in range(256))) if signed else frame
    values = array("h" if signed else "H")
    values.frombytes(frame)
    if little != (sys.byteorder == "little"):
        values.byteswap()
    low, high = min(values), max(values)
    span = max(high - low, 1)
    return bytes((v - low) * 255 // span for v in values)


def render(ds: Dataset, ts: UID, max_frames: int) -> list[bytes]:
    """Up to `max_frames` frames of `ds` as PGM (grayscale) or PPM (RGB) images; [] when the
    pixels cannot be read without decoding (compressed, 32-bit, float, subsampled)."""
    if "PixelData" not in ds or (ts.is_transfer_syntax and ts.is_encapsulated):
        return []
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    samples, bits = _int(ds, "SamplesPerPixel", 1), _int(ds, "BitsAllocated", 0)
    frames = max(_int(ds, "NumberOfFrames", 1), 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if not rows or not cols or bits not in (8, 16) or samples not in (1, 3):
        return []
    if samples == 3 and (bits != 8 or photometric not in ("RGB", "YBR_FULL")):
        return []
    data = ds.PixelData
    frame_bytes = rows * cols * samples * bits // 8
    if not isinstance(data, bytes | bytearray) or len(data) < frames * frame_bytes:
        return []
    little = ts != ExplicitVRBigEndian
    signed = _int(ds, "PixelRepresentation", 0) == 1
    planar = _int(ds, "PlanarConfiguration", 0) if samples == 3 else 0
    images = []
    for index in _frame_indices(frames, max_frames):
        frame = bytes(data[index * frame_bytes : (index + 1) * frame_bytes])
        if samples == 1:
            images.append(b"P5 %d %d 255\n" % (cols, rows) + _gray8(frame, bits, signed, little))
            continue
        if planar:
            plane = rows * cols
            pixels = bytearray(frame_bytes)
            for s in range(3):
                pixels[s::3] = frame[s * plane : (s + 1) * plane]
            frame = bytes(pixels)
        if photometric == "YBR_FULL":  # luminance alone reads best
            images.append(b"P5 %d %d 255\n" % (cols, rows) + frame[0::3])
        else:
            images.append(b"P6 %d %d 255\n" % (cols, rows) + frame)
    return images


def read_text(image: bytes, tesseract: str) -> str:
    """Tesseract's text for one PNM image (sparse-text page segmentation); raises
    ``OSError`` / ``subprocess.SubprocessError`` on failure."""
    with tempfile.TemporaryDirectory(prefix="smartbox-ocr-") as tmp:
        path = Path(tmp, "frame.pnm")
        path.write_bytes(image)
        proc = subprocess.run(
            [tesseract, str(path), "stdout", "--psm", "11"],
            capture_output=True,
            timeout=TIMEOUT_S,
            check=True,
            env=dict(os.environ, OMP_THREAD_LIMIT="1"),
        )
    return proc.stdout.decode("utf-8", "replace")


def check(
    ds: Dataset, ts: UID, ids: Identifiers, match: str, max_frames: int, tesseract: str
) -> Reason | None:
    """Hold-back reason if text read from `ds`'s pixels identifies the patient, else None."""
    for image in render(ds, ts, max_frames):
        try:
            text = read_text(image, tesseract)
        except (OSError, subprocess.SubprocessError):
            return Reason.VERIFICATION_OCR_ERROR
        if match == "any_text":
            if _WORD.search(text):
                return Reason.VERIFICATION_OCR_TEXT
        elif ids.search_identifiers(text, min_len=3):
            return Reason.VERIFICATION_OCR_TEXT
    return None
