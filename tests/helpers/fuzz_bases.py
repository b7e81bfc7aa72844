"""The clean instances the fuzzer mutates: synthetic identifiable CT instances and pydicom's
bundled test files, with the study's identifiers planted in them, grouped into studies."""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from smartbox.synthetic import make_ct_study

from . import dicom_bytes as db
from .dicom_bytes import Encoding

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
BUNDLED = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "JPGExtended.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG2000.dcm",
    "image_dfl.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "test-SR.dcm",
    "ExplVR_BigEnd.dcm",
    "liver_1frame.dcm",
    "nested_priv_SQ.dcm",
    "SC_rgb_small_odd.dcm",
    "badVR.dcm",
    "reportsi.dcm",
    "693_J2KI.dcm",
]
# what each of ``SyntheticStudy.identifiers`` is, in its order
PLANTED = [
    "name",
    "name",
    "nhs",
    "birth_date",
    "accession",
    "mrn",
    "institution",
    "name",
    "address",
    "postcode",
    "uid",
]


@dataclass(frozen=True)
class Base:
    """One clean instance: its dataset bytes (inflated) in ``syntax``."""

    study: int
    origin: str
    sop_class: str
    sop_instance: str
    syntax: str
    data: bytes


@dataclass
class StudyBases:
    """One study's clean instances and what was planted in them."""

    bases: list[Base]
    #: planted value -> its category (names, NHS number, accession...)
    identifiers: dict[str, str] = field(default_factory=dict)
    #: original UIDs (study, series, instance)
    uids: set[str] = field(default_factory=set)


def _bundled_base(rng: random.Random, name: str, study: int, seed: int, planted: dict) -> Base:
    syntax, data = db.file_dataset(Path(get_testdata_file(name)).read_bytes())
    enc = Encoding.of(syntax)
    sop_instance = generate_uid(entropy_srcs=[f"fuzz-{seed}-{study}-{name}-{rng.random()}"])
    values = {
        0x00080016: (b"UI", CTImageStorage.encode()),
        0x00080018: (b"UI", sop_instance.encode()),
        0x00080050: (b"SH", planted["accession"].encode()),
        0x00080080: (b"LO", planted["institution"].encode()),
        0x00080090: (b"PN", planted["physician"].encode()),
        0x00100010: (b"PN", planted["name"].encode()),
        0x00100020: (b"LO", planted["nhs"].encode()),
        0x00100030: (b"DA", planted["birth"].encode()),
        0x0020000D: (b"UI", planted["study_uid"].encode()),
    }
    present = {e.tag: e for e in db.top_level(data, enc)}
    sop_class = CTImageStorage
    if 0x00080016 in present:
        e = present[0x00080016]
        sop_class = data[e.value : e.value + e.length].rstrip(b"\x00 ").decode()
        del values[0x00080016]
    for tag, (vr, value) in sorted(values.items()):
        data = db.set_element(data, enc, tag, vr, value)
    return Base(study, name, sop_class, sop_instance, syntax, data)


def study_bases(seed: int, study: int, slots: int) -> StudyBases:
    """``slots`` clean instances of one study, in a seeded order (about one in eight from
    pydicom's files)."""
    rng = random.Random(f"{seed}:bases:{study}")
    bundled = max(1, slots // 8)
    synthetic = slots - bundled
    st = make_ct_study(seed * 1000 + study, series=2, per_series=(synthetic + 1) // 2)
    out = StudyBases([])
    for value, category in zip(st.identifiers, PLANTED, strict=True):
        if category != "uid" and len(value) >= 5:
            out.identifiers[value] = category
    enc = Encoding(False, True)
    for ds in st.datasets[:synthetic]:
        out.uids.update({ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID})
        data = db.encode_dataset(ds, enc)
        out.bases.append(
            Base(
                study, "synthetic", CTImageStorage, ds.SOPInstanceUID, ExplicitVRLittleEndian, data
            )
        )
    first = st.datasets[0]
    planted = {
        "accession": str(first.AccessionNumber),
        "institution": str(first.InstitutionName),
        "physician": str(first.ReferringPhysicianName),
        "name": str(first.PatientName),
        "nhs": str(first.PatientID),
        "birth": str(first.PatientBirthDate),
        "study_uid": str(first.StudyInstanceUID),
    }
    for name in rng.sample(BUNDLED, min(bundled, len(BUNDLED))):
        base = _bundled_base(rng, name, study, seed, planted)
        out.uids.add(base.sop_instance)
        out.bases.append(base)
    rng.shuffle(out.bases)
    return out


def reencode(base: Base, enc: Encoding) -> bytes:
    """The base in another uncompressed encoding (synthetic bases only are re-encoded)."""
    src = Encoding.of(base.syntax)
    with warnings.catch_warnings():  # pydicom's complaints about the bundled files' values
        warnings.simplefilter("ignore")
        ds = read_dataset(DicomBytesIO(base.data), src.implicit, src.little)
        return db.encode_dataset(ds, enc)
