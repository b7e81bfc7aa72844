"""Malformed, identifiable instances: a study's own identifiers planted in values that break
their VR, where pydicom's validation warnings would quote them (the log leak of issue 7)."""

from __future__ import annotations

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from smartbox.synthetic import SyntheticStudy, make_ct_study


def malformed_study(seed: int) -> SyntheticStudy:
    """Five instances of a synthetic CT study, each with planted values in invalid VRs:
    a DA holding the family name, a UI holding the given name, an IS holding the MRN, a CS
    holding the family name in lower case, and over-long SH/LO values holding the accession
    and NHS numbers. The routing attributes (SOP class and instance, study UID) stay valid so
    the receiver accepts every one; ``identifiers`` lists what must never reach a log."""
    study = make_ct_study(seed, series=1, per_series=5)
    family, given, nhs, _birth, accession, mrn = study.identifiers[:6]
    changes: list[dict[str, object]] = [
        {"ContentDate": family, "AcquisitionDate": f"{nhs}"},  # DA with text
        {"FrameOfReferenceUID": f"{given}.{family}"},  # UI with a name
        {"SeriesNumber": mrn, "NumberOfFrames": mrn},  # IS with letters
        {"ImageType": f"ORIGINAL\\PRIMARY\\{family.lower()}"},  # CS in lower case
        {  # wrong lengths: SH max 16, LO max 64, DS max 16, AS exactly 4
            "AccessionNumber": accession * 3,
            "Manufacturer": f"{nhs} " * 8,
            "SliceThickness": f"{nhs}.{nhs}",
            "PatientAge": given,
        },
    ]
    for ds, change in zip(study.datasets, changes, strict=True):
        for keyword, value in change.items():
            _raw(ds, keyword, str(value))
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        _raw(ref, "ReferencedSOPInstanceUID", f"{family}^{given}")  # UI with a name, nested
        ds.ReferencedImageSequence = [ref]
    return SyntheticStudy(study.datasets, study.identifiers, study.study_uid)


def _raw(ds: Dataset, keyword: str, text: str) -> None:
    """Set an element to exactly these bytes, as a careless sender would (no validation)."""
    tag = Tag(tag_for_keyword(keyword))
    vr = dictionary_VR(tag)
    value = text.encode("latin-1")
    value += b"\x00" if len(value) % 2 and vr == "UI" else b" " * (len(value) % 2)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
