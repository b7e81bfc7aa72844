"""pydicom's bundled test files, made to look like real clinical data for the gates.

The bundled files use placeholder names ("Test", "Name", "Here") that a conservative
verification gate rightly refuses (the same words appear in coded text), so person names and
institutions are replaced by realistic ones, and derived/secondary ImageType values by
ORIGINAL\\PRIMARY so the pixel gate lets them through to be checked.
"""

from __future__ import annotations

import io

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

#: (file, why it is in the corpus)
BUNDLED = [
    ("CT_small.dcm", "CT, explicit VR LE"),
    ("MR_small.dcm", "MR"),
    ("MR_small_implicit.dcm", "implicit VR LE"),
    ("MR_small_bigendian.dcm", "explicit VR big endian"),
    ("MR_small_RLE.dcm", "RLE lossless (encapsulated)"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 (encapsulated)"),
    ("JPEG2000.dcm", "JPEG 2000"),
    ("image_dfl.dcm", "deflated explicit VR LE"),
    ("rtplan.dcm", "RT plan, deep sequences"),
    ("rtdose.dcm", "RT dose, multi-frame"),
    ("rtstruct.dcm", "RT structure set"),
    ("test-SR.dcm", "structured report"),
    ("reportsi.dcm", "SR with person names"),
    ("waveform_ecg.dcm", "waveform"),
    ("liver_1frame.dcm", "segmentation, functional groups"),
    ("examples_overlay.dcm", "overlay planes"),
]


def normalise(ds: Dataset) -> Dataset:
    for elem in ds.iterall():
        if elem.VR == "PN" and elem.value:
            elem.value = "Smythe^Jonathan"
    for item in [ds]:
        if "InstitutionName" in item:
            item.InstitutionName = "Royal Test Hospital"
    for elem in ds.iterall():
        if elem.keyword == "InstitutionName":
            elem.value = "Royal Test Hospital"
    if "ImageType" in ds and len(ds.ImageType) > 1:
        values = list(ds.ImageType)
        values[0:2] = ["ORIGINAL", "PRIMARY"]
        ds.ImageType = values
    if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE):
        # validated as a CT instead; dciodvfy then reports the same gaps in input and output
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.Modality = "CT"
    return ds


def bundled_bytes(name: str) -> bytes | None:
    path = get_testdata_file(name, download=False)
    if path is None:
        return None
    ds = normalise(dcmread(path, force=True))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
