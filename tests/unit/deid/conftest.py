"""Fixtures and corpus builders for the de-identifier's unit tests (no servers)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey

KEY = PseudonymKey(secret=b"unit-test-secret-0123456789abcdef", version="k7")
NHS = "9434765919"  # valid modulus-11 (NHS Digital's documented test number)
UID_ROOT = "1.2.826.0.1.3680043.2." + NHS  # UIDs that embed the NHS number

#: Every identifying value the planted corpus hides somewhere; none may survive.
PLANTED = [
    "Featherstonehaugh",
    "Araminta",
    "Quennell",
    "Müller",
    "Lüdenscheidt",
    "Zoë",
    "Drummondwolff",
    "Persephone",
    "Ottoline",
    "Wrigglesworth",
    "Barnabus",
    NHS,
    "943 476 5919",
    "RTK00123456",
    "19610823",
    "23/08/1961",
    "ACC99887766",
    "Swithins Infirmary",
    "Quorn Crescent",
    "NG7 2UH",
    "0115 496 0123",
    "01154960123",
    UID_ROOT,
    "SENDERAE42",
    "Nottingham",
]


def ct_dataset(
    *, rows: int = 16, cols: int = 16, frames: int = 1, charset: str = "ISO_IR 192"
) -> Dataset:
    """A small valid-ish CT Image instance with a realistic set of attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID_ROOT + ".3"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = charset
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = UID_ROOT + ".3"
    ds.StudyDate = "20240315"
    ds.SeriesDate = "20240315"
    ds.ContentDate = "20240315"
    ds.AcquisitionDate = "20240315"
    ds.StudyTime = "101500"
    ds.ContentTime = "101501"
    ds.AccessionNumber = "ACC99887766"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME Medical"
    ds.ReferringPhysicianName = "Drummondwolff^Persephone"
    ds.PatientName = "Featherstonehaugh^Araminta^Quennell"
    ds.PatientID = NHS
    ds.PatientBirthDate = "19610823"
    ds.PatientSex = "F"
    ds.PatientAge = "062Y"
    ds.SliceThickness = "1.25"
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = UID_ROOT + ".1"
    ds.SeriesInstanceUID = UID_ROOT + ".2"
    ds.StudyID = "S1234"
    ds.SeriesNumber = "3"
    ds.InstanceNumber = "7"
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = UID_ROOT + ".4"
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [0.5, 0.5]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.BurnedInAnnotation = "NO"
    if frames > 1:
        ds.NumberOfFrames = frames
    # 12-bit samples with nothing in bits 12-15, whichever the byte order (both bytes <= 0x0F):
    # bits outside Bits Stored are cleared (overlays), and these pixels must come out as is
    ds.PixelData = bytes((i * 7) % 251 & 0x0F for i in range(rows * cols * 2 * frames))
    return ds


def planted_dataset() -> Dataset:
    """The CT above with identifiers planted everywhere a de-identifier tends to miss."""
    ds = ct_dataset()
    ds.file_meta.SourceApplicationEntityTitle = "SENDERAE42"
    ds.OtherPatientIDs = ["RTK00123456"]
    ds.OtherPatientNames = "Müller-Lüdenscheidt^Zoë"
    ds.PatientMotherBirthName = "Wrigglesworth^Ottoline"
    ds.PatientAddress = "14 Quorn Crescent, Nottingham NG7 2UH"
    ds.PatientTelephoneNumbers = "0115 496 0123"
    ds.InstitutionName = "St Swithins Infirmary"
    ds.InstitutionAddress = "Quorn Crescent, Nottingham"
    ds.OperatorsName = "Barnabus^Ottoline"
    ds.PerformingPhysicianName = "Müller^Zoë"
    ds.StudyDescription = "CT head for Araminta Featherstonehaugh"
    ds.SeriesDescription = "NHS 943 476 5919"
    ds.ImageComments = "call 01154960123, NG7 2UH"
    ds.AcquisitionDateTime = "20240315101500.000000+0000"
    ds.ProtocolName = "Featherstonehaugh protocol"
    # depth 3 inside sequences the walk keeps (functional groups, codes)
    inner = Dataset()
    inner.CodeValue = "T-A0100"
    inner.CodingSchemeDesignator = "SRT"
    inner.CodeMeaning = "Brain"
    inner.PatientName = "Featherstonehaugh^Araminta"
    inner.PersonName = "Wrigglesworth^Barnabus"
    inner.PatientID = NHS
    inner.ReferencedSOPInstanceUID = UID_ROOT + ".9"
    inner.InstanceCreationDate = "20240314"
    inner.add_new(0x00290010, "LO", "ACME 1.1")
    inner.add_new(0x00291010, "LO", "Featherstonehaugh")
    middle = Dataset()
    middle.AnatomicRegionSequence = Sequence([inner])
    middle.FrameComments = "Araminta"
    middle.OtherPatientIDs = NHS
    outer = Dataset()
    outer.FrameAnatomySequence = Sequence([middle])
    outer.OperatorsName = "Barnabus"
    ds.SharedFunctionalGroupsSequence = Sequence([outer])
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = UID_ROOT + ".5"
    ds.ReferencedImageSequence = Sequence([ref])
    # structured-report style text
    text_item = Dataset()
    text_item.RelationshipType = "CONTAINS"
    text_item.ValueType = "TEXT"
    text_item.TextValue = "Araminta Featherstonehaugh NHS 9434765919 NG7 2UH"
    name_item = Dataset()
    name_item.RelationshipType = "HAS OBS CONTEXT"
    name_item.ValueType = "PNAME"
    name_item.PersonName = "Drummondwolff^Persephone"
    date_item = Dataset()
    date_item.ValueType = "DATE"
    date_item.Date = "19610823"
    ds.ContentSequence = Sequence([text_item, name_item, date_item])
    # private blocks, including a private sequence and undecodable bytes
    block = ds.private_block(0x0019, "ACME 1.1", create=True)
    block.add_new(0x10, "LO", "Featherstonehaugh^Araminta")
    block.add_new(0x11, "UN", NHS.encode())
    priv_item = Dataset()
    priv_item.PatientName = "Wrigglesworth^Ottoline"
    block.add_new(0x12, "SQ", Sequence([priv_item]))
    # curves and overlays
    ds.add_new(0x60000010, "US", 16)
    ds.add_new(0x60004000, "LT", "Araminta Featherstonehaugh")
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50003000, "OW", b"Featherstonehaugh ")
    return ds


def to_bytes(ds: Dataset, *, implicit: bool = False, little: bool = True) -> bytes:
    from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif not little:
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def key() -> PseudonymKey:
    return KEY


@pytest.fixture
def policy() -> DeidPolicy:
    return DeidPolicy(trust_code="RTK")


@pytest.fixture
def deid(key: PseudonymKey, policy: DeidPolicy) -> Deidentifier:
    return Deidentifier(key, policy)


def write_trust(folder: Path, code: str, body: str = "", head: str = "") -> Path:
    """A valid trust file ``folder/<code>.toml``: the receiver's required keys, then ``head``
    (more top-level keys) and ``body`` (tables such as ``[deidentification]``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{code}.toml"
    path.write_text(
        f'code = "{code}"\nname = "Test trust {code}"\nae_title = "SB_{code}"\nport = 0\n'
        f'allowed_callers = ["{code}_PACS"]\n{head}\n{body}',
        encoding="utf-8",
    )
    return path
