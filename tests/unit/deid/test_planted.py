"""A planted-identifier corpus comes out with zero surviving identifiers."""

from __future__ import annotations

import io

import pydicom
from conftest import KEY, NHS, PLANTED, UID_ROOT, ct_dataset, planted_dataset, to_bytes
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from consumers.deid import Deidentifier, DeidPolicy


def _variants(value: str) -> set[bytes]:
    out = set()
    for v in (value, value.upper(), value.lower()):
        for codec in ("utf-8", "latin-1"):
            try:
                out.add(v.encode(codec))
            except UnicodeEncodeError:
                pass
    return out


def assert_no_planted(data: bytes) -> None:
    lowered = data.lower()
    for value in PLANTED:
        for variant in _variants(value):
            assert variant.lower() not in lowered, f"planted value survived: {value!r}"


def test_planted_corpus_leaves_nothing(deid: Deidentifier) -> None:
    result = deid.process(to_bytes(planted_dataset()))
    assert result.ok, result.reason
    assert result.data is not None
    assert_no_planted(result.data)


def test_planted_corpus_implicit_vr_leaves_nothing(deid: Deidentifier) -> None:
    result = deid.process(to_bytes(planted_dataset(), implicit=True))
    assert result.ok, result.reason
    assert result.data is not None
    assert_no_planted(result.data)


def test_output_receipts_and_structure(deid: Deidentifier) -> None:
    source = planted_dataset()
    result = deid.process(to_bytes(source))
    assert result.data is not None
    out = pydicom.dcmread(io.BytesIO(result.data))
    pseudonym, valid = deid.patient_pseudonym(NHS, None)
    assert valid and result.nhs_number_valid
    assert out.PatientName == pseudonym == out.PatientID == result.patient_pseudonym
    assert out.PatientBirthDate == ""
    assert out.PatientAge == "062Y" and out.PatientSex == "F"
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "KEY k7" in out.DeidentificationMethod
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107", "113108"]
    assert all(i.CodingSchemeDesignator == "DCM" for i in out.DeidentificationMethodCodeSequence)
    # UIDs: replaced, consistent, file meta matches
    assert out.SOPInstanceUID == deid.uid(UID_ROOT + ".3") == result.sop_instance_uid
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.StudyInstanceUID == deid.uid(UID_ROOT + ".1") == result.study_uid
    assert out.FrameOfReferenceUID.startswith("2.25.")
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == deid.uid(UID_ROOT + ".5")
    assert out.SOPClassUID == source.SOPClassUID
    assert "SourceApplicationEntityTitle" not in out.file_meta
    # dates shifted by the same whole number of days at every depth; times kept
    assert out.StudyDate != source.StudyDate
    assert out.StudyDate == out.ContentDate == out.SeriesDate
    inner = out.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0]
    assert inner.AnatomicRegionSequence[0].InstanceCreationDate != "20240314"
    assert out.AcquisitionDateTime[8:] == source.AcquisitionDateTime[8:]
    assert out.StudyTime == source.StudyTime
    # private, curves, overlays, free text gone; text in SR gone
    assert not any(e.tag.is_private for e in out.iterall())
    assert not any(0x5000 <= e.tag.group <= 0x50FF or 0x6000 <= e.tag.group <= 0x60FF for e in out)
    for kw in (
        "StudyDescription",
        "SeriesDescription",
        "ImageComments",
        "PatientAddress",
        "OtherPatientIDs",
        "InstitutionName",
        "ProtocolName",
    ):
        assert kw not in out, kw
    assert out.ContentSequence[0].TextValue == "REMOVED"  # dummy: Type 1C in SR
    assert out.PixelData == source.PixelData


def test_burned_in_instance_is_held_back(deid: Deidentifier) -> None:
    ds = planted_dataset()
    ds.BurnedInAnnotation = "YES"
    result = deid.process(to_bytes(ds))
    assert not result.ok and result.data is None
    assert result.reason == "burned_in_annotation"
    assert result.study_uid == deid.uid(UID_ROOT + ".1")  # still routable


def test_identifier_in_retained_text_is_caught_by_verification(deid: Deidentifier) -> None:
    ds = ct_dataset()
    code = Dataset()
    code.CodeValue = "X1"
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = "Scan of Featherstonehaugh"  # CodeMeaning is retained text
    ds.AnatomicRegionSequence = Sequence([code])
    result = deid.process(to_bytes(ds))
    assert not result.ok
    assert result.reason == "verification_failed:person_name"
    assert "Featherstone" not in result.reason


def test_patterns_in_retained_text_are_caught(deid: Deidentifier) -> None:
    for text, kind in (
        ("ref 485 777 3457", "nhs_number_pattern"),
        ("clinic LS1 4AB", "postcode_pattern"),
        ("ring +44 20 7946 0958", "phone_pattern"),
    ):
        ds = ct_dataset()
        ds.ConvolutionKernel = "B30f"
        ds.WindowCenterWidthExplanation = text
        result = deid.process(to_bytes(ds))
        assert result.reason == f"verification_failed:{kind}", text


def test_clean_descriptors_option_keeps_clean_text_only(key) -> None:
    deid = Deidentifier(
        key,
        DeidPolicy(
            trust_code="RTK",
            options=frozenset({"retain_longitudinal_modified_dates", "clean_descriptors"}),
        ),
    )
    ds = ct_dataset()
    ds.StudyDescription = "CT HEAD"
    ds.SeriesDescription = "Araminta's head"  # her given name: emptied
    ds.PatientName = "Featherstonehaugh^Araminta"
    out = pydicom.dcmread(io.BytesIO(deid.process(to_bytes(ds)).data))
    assert out.StudyDescription == "CT HEAD"
    assert out.SeriesDescription == ""


def test_retain_safe_private(key) -> None:
    deid = Deidentifier(
        key,
        DeidPolicy(
            trust_code="RTK",
            options=frozenset({"retain_longitudinal_modified_dates", "retain_safe_private"}),
        ),
    )
    ds = ct_dataset()
    safe = ds.private_block(0x00E1, "ELSCINT1", create=True)
    safe.add_new(0x21, "DS", "12.5")  # DLP: safe
    safe.add_new(0x22, "LO", "Featherstonehaugh")  # not in the safe list
    other = ds.private_block(0x0019, "ACME 1.1", create=True)
    other.add_new(0x10, "DS", "1")
    out = pydicom.dcmread(io.BytesIO(deid.process(to_bytes(ds)).data))
    kept = {(e.tag.group, e.tag.element) for e in out if e.tag.is_private}
    assert (0x00E1, 0x0010) in kept and (0x00E1, 0x1021) in kept
    assert (0x00E1, 0x1022) not in kept and not any(g == 0x0019 for g, _ in kept)
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert "113111" in codes


def test_unparseable_is_held_back_not_raised(deid: Deidentifier) -> None:
    for raw in (b"", b"not dicom at all", b"\x00" * 132 + b"DICM" + b"\xff" * 50):
        result = deid.process(raw)
        assert not result.ok and result.reason == "unparseable" and result.data is None


def test_no_preamble_input(deid: Deidentifier) -> None:
    raw = to_bytes(ct_dataset())
    for stripped in (raw[128:], raw[132:]):  # no preamble; neither preamble nor "DICM"
        result = deid.process(stripped)
        assert result.ok, result.reason
        assert KEY.version in result.data.decode("latin-1")
