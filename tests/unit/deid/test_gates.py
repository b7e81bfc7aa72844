"""Pixel gate reasons, and the verification gate on non-ASCII names."""

from __future__ import annotations

import io

import pydicom
import pytest
from conftest import ct_dataset, to_bytes
from pydicom.data import get_charset_files
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage

from consumers.deid import Deidentifier, DeidPolicy
from consumers.deid.verify import Identifiers


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"BurnedInAnnotation": "YES"}, "burned_in_annotation"),
        ({"BurnedInAnnotation": "yes"}, "burned_in_annotation"),
        ({"RecognizableVisualFeatures": "YES"}, "recognizable_visual_features"),
        ({"Modality": "US"}, "modality_not_allowed"),
        ({"Modality": "OT"}, "modality_not_allowed"),
        ({"Modality": "DOC"}, "modality_not_allowed"),
        ({"SOPClassUID": SecondaryCaptureImageStorage}, "sop_class_not_allowed"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.4"}, "sop_class_not_allowed"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"}, "sop_class_not_allowed"),
        ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, "image_type_screen_save"),
        ({"ImageType": ["DERIVED", "SECONDARY", "DOSE_INFO"]}, "image_type_dose_report"),
        ({"ImageType": ["DERIVED", "SECONDARY", "OTHER"]}, "image_type_secondary"),
    ],
)
def test_pixel_gate_holds_back(change, reason, deid: Deidentifier) -> None:
    ds = ct_dataset()
    for kw, value in change.items():
        setattr(ds, kw, value)
    result = deid.process(to_bytes(ds))
    assert not result.ok and result.data is None and result.reason == reason


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"ImageType": ["DERIVED", "SECONDARY", "REFORMATTED"]},
        {"BurnedInAnnotation": "NO"},
    ],
)
def test_pixel_gate_lets_through(change, deid: Deidentifier) -> None:
    ds = ct_dataset()
    for kw, value in change.items():
        setattr(ds, kw, value)
    assert deid.process(to_bytes(ds)).ok


CHARSET_FILES = [
    "chrH31.dcm",
    "chrJapMulti.dcm",
    "chrI2.dcm",
    "chrX1.dcm",
    "chrX2.dcm",
    "chrGerm.dcm",
    "chrRuss.dcm",
    "chrArab.dcm",
    "chrGreek.dcm",
    "chrKoreanMulti.dcm",
]


@pytest.mark.parametrize("name", CHARSET_FILES)
def test_non_ascii_names_removed(name: str, deid: Deidentifier) -> None:
    path = next(p for p in get_charset_files(name))
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.Modality = "CT"
    tokens = [t for t in str(ds.PatientName).replace("=", "^").split("^") if len(t) >= 2]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    result = deid.process(buf.getvalue())
    assert result.ok, result.reason
    out = pydicom.dcmread(io.BytesIO(result.data))
    text = "\n".join(str(e.value) for e in out.iterall() if e.VR in ("PN", "LO", "SH", "LT"))
    for token in tokens:
        assert token not in text
        for charset in ("utf-8", "iso2022_jp", "euc_kr", "latin-1"):
            try:
                assert token.encode(charset) not in result.data
            except UnicodeEncodeError:
                pass


@pytest.mark.parametrize("name", ["chrH31.dcm", "chrX1.dcm", "chrI2.dcm"])
def test_verification_catches_non_ascii_name_left_in_text(name: str) -> None:
    ds = pydicom.dcmread(next(iter(get_charset_files(name))))
    ids = Identifiers()
    ids.collect(ds, "PatientID")
    ideographic = str(ds.PatientName).split("=")[-2 if "=" in str(ds.PatientName) else 0]
    part = max(ideographic.split("^"), key=len)  # tokens of 2+ characters are collected
    assert ids.search_text(f"report for {part} today") == "person_name"


def test_verification_ignores_unrelated_text() -> None:
    ids = Identifiers()
    ids.add_name("Li^Al")
    assert ids.search_text("AXIAL SLICE") is None
    assert ids.search_text("Dr Li reviewed") == "person_name"


def test_original_uid_surviving_anywhere_is_caught(key) -> None:
    """With UIDs replaced, an original instance UID left in retained text is a leak."""
    ds = ct_dataset()
    ds.StudyInstanceUID = "1.2.826.0.1.555.77.1"
    ds.ContextGroupExtensionCreatorUID = ds.StudyInstanceUID  # KEEP_UID: copied verbatim
    result = Deidentifier(key, DeidPolicy(trust_code="RTK")).process(to_bytes(ds))
    assert result.reason == "verification_failed:original_uid"


def test_own_pseudonym_never_trips_the_pattern_gate() -> None:
    """32 hex digits can contain a phone- or NHS-number-like run; that is not a leak."""
    import io

    from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey
    from consumers.deid.verify import pattern_kind
    from smartbox.synthetic import make_ct_study

    study = make_ct_study(3, series=1, per_series=1)
    buf = io.BytesIO()
    study.datasets[0].save_as(buf, enforce_file_format=True)
    policy = DeidPolicy(trust_code="RTK")
    # find a key whose pseudonym for this patient looks like a phone/NHS/postcode pattern
    for n in range(100_000):
        deid = Deidentifier(PseudonymKey(f"key-{n:08d}-padding-padding".encode(), "k1"), policy)
        pseudonym, _ok = deid.patient_pseudonym(study.datasets[0].PatientID, None)
        if pattern_kind(pseudonym):
            break
    else:
        raise AssertionError("no pattern-like pseudonym found")
    result = deid.process(buf.getvalue())
    assert result.ok, result.reason
    assert result.patient_pseudonym == pseudonym
