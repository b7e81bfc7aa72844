"""Allow-list mode: only what the instance's IOD lists survives; the default profile keeps
what the table does not name when its VR cannot carry a name."""

from __future__ import annotations

import io

import pydicom
import pytest
from conftest import KEY, ct_dataset, planted_dataset, to_bytes
from corpus import bundled_bytes
from helpers.util import missing
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_validity import DCIODVFY, _errors

from consumers.deid import Deidentifier, DeidPolicy
from consumers.deid.allowlist_iods import allow_lists

ALLOW = Deidentifier(KEY, DeidPolicy(trust_code="RTK", allow_list=True))


def planted_unknown() -> Dataset:
    """A CT with attributes of other IODs that the table does not name and whose VRs cannot
    hold a name, so the default profile keeps them."""
    ds = ct_dataset()
    ds.NumberOfSlices = 77  # (0054,0081) NM/PET: US
    ds.ViewPosition = "AP"  # (0018,5101) CR/DX: CS
    ds.add_new(0x00189345, "FD", 12.5)  # CTDIvol: in the CT Image module, stays
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D3000", "SRT", "Chest"
    item.NumberOfSlices = 3  # not in a code item either
    ds.AnatomicRegionSequence = Sequence([item])
    return ds


def test_default_profile_keeps_what_allow_list_mode_removes(deid: Deidentifier) -> None:
    out = pydicom.dcmread(io.BytesIO(deid.process(to_bytes(planted_unknown())).data))
    assert out.NumberOfSlices == 77 and out.ViewPosition == "AP"
    result = ALLOW.process(to_bytes(planted_unknown()))
    assert result.ok, result.reason
    out = pydicom.dcmread(io.BytesIO(result.data))
    assert "NumberOfSlices" not in out and "ViewPosition" not in out
    assert "NumberOfSlices" not in out.AnatomicRegionSequence[0]
    assert out.AnatomicRegionSequence[0].CodeValue == "T-D3000"
    assert out.CTDIvol == 12.5 and out.Rows == 16 and out.PixelData
    assert out.PatientIdentityRemoved == "YES" and out.DeidentificationMethodCodeSequence


def test_every_attribute_left_is_on_the_list() -> None:
    by_class, nested = allow_lists()
    out = pydicom.dcmread(io.BytesIO(ALLOW.process(to_bytes(planted_dataset())).data))
    top = by_class[str(out.SOPClassUID)]
    assert all(int(e.tag) in top for e in out)
    assert all(int(e.tag) in top | nested for e in out.iterall())


def test_an_iod_without_a_list_is_held_back() -> None:
    ds = ct_dataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    assert ALLOW.process(to_bytes(ds)).reason == "iod_not_in_allow_list"


@pytest.mark.parametrize("name", ["synth", "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm"])
def test_allow_list_output_stays_valid(name: str, tmp_path) -> None:
    if DCIODVFY is None:
        missing("dciodvfy (dicom3tools) not installed")
    raw = to_bytes(ct_dataset()) if name == "synth" else bundled_bytes(name)
    if raw is None:
        pytest.skip(f"{name} not bundled with this pydicom")
    result = ALLOW.process(raw)
    assert result.ok, result.reason
    src, out = tmp_path / "in.dcm", tmp_path / "out.dcm"
    src.write_bytes(raw)
    out.write_bytes(result.data)
    assert not _errors(out) - _errors(src)
