"""Synthetic, identifiable-looking CT studies for the demo, tests and benchmarks.

Every value that would identify a patient is planted on purpose and returned in
``SyntheticStudy.identifiers`` so that tests can prove none of it leaves the box. The people
are invented; NHS numbers are valid by their check digit and drawn from the 999 range that the
NHS reserves for testing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from .canary import PROBE_PATIENT_ID, probe_study_uid

FIRST = ["Alice", "Bartholomew", "Cressida", "Desmond", "Eleanor", "Fitzgerald", "Gwendolyn"]
LAST = ["Worthington", "Pemberton", "Ashcroft", "Blackwood", "Fairweather", "Thistlewood"]


def nhs_check_digit(nine: str) -> int | None:
    total = sum(int(d) * (10 - i) for i, d in enumerate(nine))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def make_nhs_number(rng: random.Random) -> str:
    """A valid test NHS number (999 prefix)."""
    while True:
        nine = "999" + "".join(str(rng.randrange(10)) for _ in range(6))
        check = nhs_check_digit(nine)
        if check is not None:
            return nine + str(check)


@dataclass
class SyntheticStudy:
    datasets: list[Dataset]
    identifiers: list[str] = field(default_factory=list)
    study_uid: str = ""

    def write(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, ds in enumerate(self.datasets):
            path = directory / f"{i:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths


def make_ct_study(
    seed: int,
    *,
    series: int = 2,
    per_series: int = 3,
    rows: int = 64,
    columns: int = 64,
    nhs_number: str | None = None,
) -> SyntheticStudy:
    """A multi-series CT study with identifiers in top-level, nested and private elements."""
    rng = random.Random(seed)
    given, family = rng.choice(FIRST), rng.choice(LAST) + f"{seed:03d}"
    nhs = nhs_number or make_nhs_number(rng)
    birth = f"19{rng.randrange(30, 99):02d}{rng.randrange(1, 13):02d}{rng.randrange(1, 28):02d}"
    accession = f"ACC{rng.randrange(10**7, 10**8)}"
    mrn = f"MRN{rng.randrange(10**6, 10**7)}"
    institution = f"St {rng.choice(LAST)} Infirmary"
    address = f"{rng.randrange(1, 200)} {rng.choice(LAST)} Road, Cambridge CB2 0QQ"
    physician = f"{rng.choice(LAST)}^{rng.choice(FIRST)}^^Dr"
    study_uid = generate_uid(entropy_srcs=[f"study-{seed}"])
    frame_uid = generate_uid(entropy_srcs=[f"frame-{seed}"])
    study_date = (
        f"20{rng.randrange(10, 26):02d}{rng.randrange(1, 13):02d}{rng.randrange(1, 28):02d}"
    )
    pixels = bytes(rng.randrange(256) for _ in range(256)) * (rows * columns * 2 // 256 + 1)
    datasets = []
    for s in range(series):
        series_uid = generate_uid(entropy_srcs=[f"series-{seed}-{s}"])
        for i in range(per_series):
            sop_uid = generate_uid(entropy_srcs=[f"sop-{seed}-{s}-{i}"])
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
            ds.AccessionNumber = accession
            ds.Modality = "CT"
            ds.Manufacturer = "Synthetic Medical"
            ds.InstitutionName = institution
            ds.InstitutionAddress = address
            ds.ReferringPhysicianName = physician
            ds.StationName = f"CT{seed:02d}-{family[:4].upper()}"
            ds.StudyDescription = f"CT CHEST for {family}"
            ds.SeriesDescription = f"Axial {s} {given}"
            ds.OperatorsName = f"{rng.choice(LAST)}^{rng.choice(FIRST)}"
            ds.PatientName = f"{family}^{given}"
            ds.PatientID = nhs
            ds.PatientBirthDate = birth
            ds.PatientSex = rng.choice(["F", "M"])
            ds.PatientAge = f"{rng.randrange(20, 90):03d}Y"
            ds.OtherPatientIDsSequence = Sequence([Dataset()])
            ds.OtherPatientIDsSequence[0].PatientID = mrn
            ds.OtherPatientIDsSequence[0].TypeOfPatientID = "TEXT"
            ds.OtherPatientIDsSequence[0].IssuerOfPatientID = institution
            req = Dataset()
            req.RequestedProcedureID = accession
            req.ScheduledProcedureStepID = mrn
            inner = Dataset()
            inner.CodeValue = "CT-CHEST"
            inner.CodingSchemeDesignator = "99LOCAL"
            inner.CodeMeaning = f"Chest for {given} {family}"
            req.ScheduledProtocolCodeSequence = Sequence([inner])
            ds.RequestAttributesSequence = Sequence([req])
            block = ds.private_block(0x0011, "ACME HOSPITAL", create=True)
            block.add_new(0x01, "LO", f"{family} {given}")
            block.add_new(0x02, "LO", nhs)
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.StudyID = accession[-6:]
            ds.SeriesNumber = s + 1
            ds.InstanceNumber = i + 1
            ds.PatientPosition = "HFS"
            ds.ImagePositionPatient = [0, 0, float(i)]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.SliceThickness = 1.0
            ds.PixelSpacing = [0.7, 0.7]
            ds.KVP = 120
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = rows, columns
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
            ds.PixelRepresentation = 0
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.BurnedInAnnotation = "NO"
            ds.PixelData = pixels[: rows * columns * 2]
            datasets.append(ds)
    identifiers = [
        family,
        given,
        nhs,
        birth,
        accession,
        mrn,
        institution,
        physician.split("^")[0],
        address.split(",")[0],
        "CB2 0QQ",
        study_uid,
    ]
    return SyntheticStudy(datasets, identifiers, study_uid)


def make_probe_study(seed: int, *, instances: int = 2) -> SyntheticStudy:
    """A small synthetic CT study for ``smartbox probe`` with both probe markers
    (``smartbox.canary``): the probe patient, no NHS number, a marked study UID; fresh UIDs
    every time (seeded), so each probe is a new study end to end."""
    study = make_ct_study(seed, series=1, per_series=instances, rows=32, columns=32)
    nonce = f"probe-{seed}"
    study_uid = probe_study_uid(random.Random(nonce))
    series_uid = generate_uid(prefix=None, entropy_srcs=[nonce, "series"])
    for i, ds in enumerate(study.datasets):
        ds.PatientID = PROBE_PATIENT_ID
        ds.PatientName = "PROBE^SMARTBOX"
        del ds.OtherPatientIDsSequence
        for tag in list(ds.keys()):
            if tag.is_private:
                del ds[tag]  # the synthetic NHS number lives in a private element
        ds.StudyDescription = "smartbox probe"
        ds.SeriesDescription = "smartbox probe"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        sop_uid = generate_uid(prefix=None, entropy_srcs=[nonce, "sop", str(i)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    study.study_uid = study_uid
    study.identifiers = [study_uid]
    return study
