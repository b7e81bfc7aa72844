"""The optional OCR verifier. Rendering is tested always; reading text needs tesseract
(Debian: tesseract-ocr) and Pillow (to draw the text): skipped when either is missing,
never a CI failure, because OCR is optional at runtime."""

from __future__ import annotations

import io
import shutil

import pydicom
import pytest
from conftest import KEY, ct_dataset, to_bytes
from helpers.util import IN_CI
from pydicom.uid import ExplicitVRLittleEndian

from consumers.deid import DeidConfigError, Deidentifier, DeidPolicy, MaskRect, MaskRule, ocr

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
ROWS, COLS = 120, 480

try:
    from PIL import Image, ImageDraw, ImageFont
except ImportError:  # pragma: no cover - depends on the test environment
    Image = None  # type: ignore[assignment]

needs_ocr = pytest.mark.skipif(  # CI=true installs both: there the test runs, and fails without
    (shutil.which("tesseract") is None or Image is None) and not IN_CI,
    reason="OCR test needs tesseract (apt-get install tesseract-ocr) and Pillow "
    "(pip install pillow); OCR is optional",
)


def _text_image(top: str, bottom: str) -> bytes:
    """8-bit grayscale pixels: `top` written in the first 40 rows, `bottom` lower down."""
    image = Image.new("L", (COLS, ROWS), 0)
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=30)
    except TypeError:  # Pillow < 10.1: the small bitmap font only
        font = ImageFont.load_default()
    draw.text((8, 4), top, fill=255, font=font)
    draw.text((8, 70), bottom, fill=255, font=font)
    return image.tobytes()


def _us(pixels: bytes):
    ds = ct_dataset(rows=ROWS, cols=COLS)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US_IMAGE
    ds.Modality = "US"
    ds.Manufacturer, ds.ManufacturerModelName = "ACME Medical", "Sono 1"
    del ds.BurnedInAnnotation
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = pixels
    return ds


HEADER = MaskRule("ACME Medical", "Sono 1", ROWS, COLS, (MaskRect(0, 0, COLS, 45),), name="hdr")


def _deid(**policy) -> Deidentifier:
    return Deidentifier(KEY, DeidPolicy(trust_code="RTK", mask_rules=(HEADER,), ocr=True, **policy))


@needs_ocr
def test_ocr_holds_back_a_name_left_outside_the_mask() -> None:
    # the patient's family name (planted in ct_dataset) sits below the masked header
    ds = _us(_text_image("FEATHERSTONEHAUGH", "FEATHERSTONEHAUGH"))
    result = _deid().process(to_bytes(ds))
    assert result.reason == "verification_failed:ocr_text"


@needs_ocr
def test_ocr_passes_when_the_mask_covers_the_name() -> None:
    ds = _us(_text_image("FEATHERSTONEHAUGH", "LEFT KIDNEY"))
    result = _deid().process(to_bytes(ds))
    assert result.ok, result.reason
    assert result.mask_rule == "hdr"


@needs_ocr
def test_ocr_any_text_mode_holds_back_any_word() -> None:
    ds = _us(_text_image("FEATHERSTONEHAUGH", "LEFT KIDNEY"))
    assert _deid(ocr_match="any_text").process(to_bytes(ds)).reason == (
        "verification_failed:ocr_text"
    )


@needs_ocr
def test_ocr_scope_all_reads_unmasked_instances() -> None:
    ds = ct_dataset(rows=ROWS, cols=COLS)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = _text_image("", "ARAMINTA")  # the patient's given name, in a CT
    assert Deidentifier(KEY, DeidPolicy(trust_code="RTK", ocr=True)).process(to_bytes(ds)).ok
    result = _deid(ocr_scope="all").process(to_bytes(ds))
    assert result.reason == "verification_failed:ocr_text"


def test_ocr_without_tesseract_is_a_configuration_error(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DeidConfigError, match="tesseract"):
        Deidentifier(KEY, DeidPolicy(trust_code="RTK", ocr=True))
    Deidentifier(KEY, DeidPolicy(trust_code="RTK"))  # off by default: no tesseract needed


def test_render_scales_16_bit_grayscale_to_8_bit_pgm() -> None:
    ds = ct_dataset(rows=2, cols=3)
    ds.PixelData = b"".join(v.to_bytes(2, "little") for v in (0, 100, 200, 300, 400, 4000))
    (image,) = ocr.render(ds, ExplicitVRLittleEndian, 3)
    assert image == b"P5 3 2 255\n" + bytes([0, 6, 12, 19, 25, 255])


def test_render_picks_frames_evenly_and_skips_compressed() -> None:
    assert ocr._frame_indices(100, 3) == [0, 50, 99]
    assert ocr._frame_indices(2, 3) == [0, 1]
    ds = ct_dataset(rows=4, cols=4, frames=10)
    assert len(ocr.render(ds, ExplicitVRLittleEndian, 3)) == 3
    from pydicom.uid import RLELossless

    assert ocr.render(ds, RLELossless, 3) == []


def test_render_rgb_planar_is_interleaved() -> None:
    ds = ct_dataset(rows=1, cols=2)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 1
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = bytes([1, 2, 10, 20, 100, 200])  # RR GG BB
    (image,) = ocr.render(ds, ExplicitVRLittleEndian, 1)
    assert image == b"P6 2 1 255\n" + bytes([1, 10, 100, 2, 20, 200])


def test_output_pixels_read_back_are_the_written_ones() -> None:
    """The OCR reads the dataset that was written: masked pixels, not the source's."""
    ds = _us(bytes(ROWS * COLS))
    result = Deidentifier(KEY, DeidPolicy(trust_code="RTK", mask_rules=(HEADER,))).process(
        to_bytes(ds)
    )
    assert result.ok
    assert pydicom.dcmread(io.BytesIO(result.data)).PixelData == bytes(ROWS * COLS)
