"""Mask rules: known burned-in rectangles blanked in native pixel data, every frame; the
rest of the image untouched; compressed pixel data never decompressed; rules from TOML."""

from __future__ import annotations

import io
import struct
import tomllib

import pydicom
import pytest
from conftest import KEY, ct_dataset, to_bytes
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRBigEndian, RLELossless

from consumers.deid import (
    DeidConfigError,
    Deidentifier,
    DeidPolicy,
    MaskRect,
    MaskRule,
    mask_rules_from_toml,
)

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
ROWS, COLS, FRAMES = 48, 64, 3
TEXT = MaskRect(x=4, y=2, width=40, height=8)  # where the device writes the patient name


def us_dataset(
    *,
    bits: int = 8,
    samples: int = 1,
    planar: int = 0,
    signed: bool = False,
    padding: int | None = None,
    frames: int = FRAMES,
):
    """A synthetic ultrasound cine with 'text' (all 0x7F bytes) in the TEXT rectangle."""
    ds = ct_dataset(rows=ROWS, cols=COLS)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = (
        US_MULTIFRAME if frames > 1 else US_IMAGE
    )
    ds.Modality = "US"
    ds.Manufacturer, ds.ManufacturerModelName = "ACME Medical", "Sono 1"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    del ds.BurnedInAnnotation
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = planar
    ds.PixelRepresentation = int(signed)
    if padding is not None:
        ds.PixelPaddingValue = padding
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063
        ds.FrameTime = "33.3"
    size = bits // 8
    pixels = bytearray(
        (i * 13 + 1) % 251 or 1 for i in range(ROWS * COLS * samples * size * frames)
    )
    for offset in _text_offsets(bits, samples, planar, frames):
        pixels[offset : offset + size] = b"\x7f" * size
    ds.PixelData = bytes(pixels)
    return ds


def _text_offsets(bits, samples, planar, frames, rect=TEXT):
    size = bits // 8
    frame_bytes = ROWS * COLS * samples * size
    for f in range(frames):
        for y in range(rect.y, rect.y + rect.height):
            for x in range(rect.x, rect.x + rect.width):
                for s in range(samples):
                    if planar:
                        yield f * frame_bytes + (s * ROWS * COLS + y * COLS + x) * size
                    else:
                        yield f * frame_bytes + ((y * COLS + x) * samples + s) * size


def rule(**change) -> MaskRule:
    fields = dict(
        manufacturer="ACME MEDICAL",
        model="sono 1",
        rows=ROWS,
        columns=COLS,
        rectangles=(TEXT,),
        modality="US",
        name="acme-sono-header",
    )
    fields.update(change)
    return MaskRule(**fields)


def deid_with(*rules: MaskRule, **policy) -> Deidentifier:
    return Deidentifier(KEY, DeidPolicy(trust_code="RTK", mask_rules=rules, **policy))


@pytest.mark.parametrize(
    ("kwargs", "fill"),
    [
        ({}, b"\x00"),
        ({"bits": 16}, b"\x00\x00"),
        ({"bits": 16, "signed": True}, struct.pack("<h", -32768)),
        ({"bits": 16, "padding": 7}, struct.pack("<H", 7)),
        ({"samples": 3}, b"\x00"),
        ({"samples": 3, "planar": 1}, b"\x00"),
        ({"frames": 1}, b"\x00"),
    ],
    ids=["8bit", "16bit", "16bit-signed", "padding-value", "rgb", "rgb-planar", "one-frame"],
)
def test_mask_blanks_rectangle_in_every_frame_and_nothing_else(kwargs, fill) -> None:
    ds = us_dataset(**kwargs)
    source = bytes(ds.PixelData)
    result = deid_with(rule()).process(to_bytes(ds))
    assert result.ok, result.reason
    assert result.mask_rule == "acme-sono-header"
    out = pydicom.dcmread(io.BytesIO(result.data))
    masked = bytes(out.PixelData)
    assert len(masked) == len(source)
    params = dict(
        bits=16 if "bits" in kwargs else 8,
        samples=kwargs.get("samples", 1),
        planar=kwargs.get("planar", 0),
        frames=kwargs.get("frames", FRAMES),
    )
    size = params["bits"] // 8
    text = set(_text_offsets(**params))
    assert text
    for offset in text:
        assert masked[offset : offset + size] == fill
    expected = bytearray(source)
    for offset in text:
        expected[offset : offset + size] = fill
    assert masked == bytes(expected)  # every other byte unchanged
    assert out.BurnedInAnnotation == "NO"
    assert "PIXELS MASKED acme-sono-header" in list(out.DeidentificationMethod)
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert "113101" in codes


def test_big_endian_fill_is_written_big_endian() -> None:
    ds = us_dataset(bits=16, padding=0x0102, frames=1)
    result = deid_with(rule()).process(to_bytes(ds, little=False))
    assert result.ok, result.reason
    out = pydicom.dcmread(io.BytesIO(result.data))
    assert out.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    first = next(iter(_text_offsets(16, 1, 0, 1)))
    assert out[0x7FE00010].value[first : first + 2] == b"\x01\x02"


def test_implicit_vr_masks_too() -> None:
    result = deid_with(rule()).process(to_bytes(us_dataset(), implicit=True))
    assert result.ok, result.reason
    first = next(iter(_text_offsets(8, 1, 0, FRAMES)))
    assert pydicom.dcmread(io.BytesIO(result.data)).PixelData[first] == 0


@pytest.mark.parametrize(
    "change",
    [
        {"model": "Sono 2"},
        {"manufacturer": "ACME"},
        {"rows": ROWS * 2, "rectangles": (TEXT,)},
        {"modality": "CT"},
        {"sop_class_uid": US_IMAGE},
    ],
    ids=["other-model", "manufacturer-prefix", "other-size", "other-modality", "other-class"],
)
def test_unmatched_device_still_held_back(change) -> None:
    assert deid_with(rule(sop_class_uid=US_MULTIFRAME)).process(to_bytes(us_dataset())).ok
    result = deid_with(rule(**change)).process(to_bytes(us_dataset()))
    assert not result.ok and result.data is None
    assert result.reason == "modality_not_allowed"
    assert result.mask_rule is None


def test_no_rules_holds_back() -> None:
    assert deid_with().process(to_bytes(us_dataset())).reason == "modality_not_allowed"


def test_compressed_pixel_data_is_never_decompressed() -> None:
    ds = us_dataset(frames=1)
    ds.PixelData = encapsulate([bytes(ds.PixelData)])  # never decoded: content is opaque
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    result = deid_with(rule()).process(buf.getvalue())
    assert not result.ok and result.reason == "mask_rule_compressed"


def test_unsupported_layout_held_back() -> None:
    ds = us_dataset(frames=1)
    ds.PixelData = bytes(ds.PixelData)[:-10]  # shorter than Rows x Columns
    assert deid_with(rule()).process(to_bytes(ds)).reason == "mask_rule_unsupported"


def test_burned_in_annotation_yes_is_lifted_by_a_rule() -> None:
    ds = ct_dataset(rows=ROWS, cols=COLS)
    ds.Manufacturer, ds.ManufacturerModelName = "ACME Medical", "Sono 1"
    ds.BurnedInAnnotation = "YES"
    assert deid_with().process(to_bytes(ds)).reason == "burned_in_annotation"
    result = deid_with(rule(modality=None)).process(to_bytes(ds))
    assert result.ok and pydicom.dcmread(io.BytesIO(result.data)).BurnedInAnnotation == "NO"


def test_faces_are_not_lifted_by_a_rule() -> None:
    ds = us_dataset()
    ds.RecognizableVisualFeatures = "YES"
    assert deid_with(rule()).process(to_bytes(ds)).reason == "recognizable_visual_features"


def test_known_burn_in_device_held_back_unless_masked() -> None:
    """A Siemens NM screen (865 rows) from the shipped device list (CTP)."""
    ds = ct_dataset(rows=865, cols=8)
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "NM", "SIEMENS NM", "Symbia"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    assert deid_with().process(to_bytes(ds)).reason == "device_burns_in_text"
    header = MaskRule("Siemens NM", "SYMBIA", 865, 8, (MaskRect(0, 0, 8, 35),), name="nm")
    result = deid_with(header).process(to_bytes(ds))
    assert result.ok and result.mask_rule == "nm"
    assert pydicom.dcmread(io.BytesIO(result.data)).PixelData[: 8 * 35 * 2] == bytes(8 * 35 * 2)


TOML = """
[[deidentification.mask_rules]]
name = "logiq-e9"
manufacturer = "GE Healthcare"
model = "LOGIQE9"
modality = "US"
rows = 720
columns = 960
rectangles = [ { x = 0, y = 0, width = 960, height = 70 }, [10, 80, 100, 20] ]

[[deidentification.mask_rules]]
manufacturer = "ACME"
model = "Sono 1"
rows = 48
columns = 64
rectangles = [ [0, 0, 64, 8] ]
"""


def test_mask_rules_from_toml() -> None:
    tables = tomllib.loads(TOML)["deidentification"]["mask_rules"]
    rules = mask_rules_from_toml(tables)
    assert rules[0] == MaskRule(
        "GE Healthcare",
        "LOGIQE9",
        720,
        960,
        (MaskRect(0, 0, 960, 70), MaskRect(10, 80, 100, 20)),
        modality="US",
        name="logiq-e9",
    )
    assert rules[1].modality is None and rules[1].name == ""
    DeidPolicy(trust_code="RTK", mask_rules=rules)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"manufacturer": None}, "mask_rules[0].manufacturer: required"),
        ({"model": 7}, "mask_rules[0].model: a string"),
        ({"rows": "720"}, "mask_rules[0].rows: an integer"),
        ({"columns": 0}, "mask_rules[0].columns: an integer"),
        ({"colour": "red"}, "mask_rules[0].colour: unknown key"),
        ({"rectangles": []}, "mask_rules[0].rectangles: a non-empty list"),
        (
            {"rectangles": [{"x": 0, "y": 0, "width": 0, "height": 5}]},
            "mask_rules[0].rectangles[0].width: an integer >= 1",
        ),
        ({"rectangles": [{"x": 0, "y": 0, "width": 5}]}, "mask_rules[0].rectangles[0].height"),
        ({"rectangles": [[0, 0, 5]]}, "mask_rules[0].rectangles[0]: {x, y, width, height}"),
        ({"rectangles": [[900, 0, 100, 5]]}, "mask_rules[0]: mask rule rectangles[0]"),
        ({"name": "bad/name"}, "mask_rules[0]: mask rule name"),
    ],
)
def test_mask_rules_from_toml_errors_name_the_field(change, field) -> None:
    table = {
        "manufacturer": "M",
        "model": "X",
        "rows": 720,
        "columns": 960,
        "rectangles": [[0, 0, 10, 10]],
    }
    for key, value in change.items():
        if value is None:
            del table[key]
        else:
            table[key] = value
    with pytest.raises(DeidConfigError) as err:
        mask_rules_from_toml([table])
    assert f"deidentification.{field}" in str(err.value)


def test_policy_rejects_non_rules() -> None:
    with pytest.raises(DeidConfigError):
        DeidPolicy(trust_code="RTK", mask_rules=[rule()])  # type: ignore[arg-type]


def test_device_list_is_well_formed() -> None:
    import json
    from importlib import resources

    from consumers.deid.pixel_gate import burn_in_devices

    doc = json.loads(
        resources.files("consumers.deid").joinpath("data", "burned_in_devices.json").read_text()
    )
    assert "DicomPixelAnonymizer.script" in doc["source"]
    assert len(burn_in_devices()) == len(doc["devices"]) >= 30
    for device in doc["devices"]:
        assert device["manufacturer"] or device["model"], device
        assert set(device) <= {
            "manufacturer",
            "model",
            "modality",
            "rows",
            "columns",
            "ctp_regions",
            "note",
        }
        for x, y, w, h in device["ctp_regions"]:
            assert min(x, y) >= 0 and min(w, h) > 0
