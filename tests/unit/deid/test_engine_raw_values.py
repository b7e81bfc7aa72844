"""Dates and UIDs are rewritten straight from the bytes read (``engine._raw_text``) when
pydicom has not converted them yet: the output must be byte for byte what pydicom's
conversion gives, for every encoding, option set and awkward value (padding, several
values, empty values, values of spaces only)."""

from __future__ import annotations

import pytest
from conftest import KEY, UID_ROOT, planted_dataset, to_bytes
from pydicom.dataset import Dataset

from consumers.deid import Deidentifier, DeidPolicy
from consumers.deid import engine as engine_module

POLICIES = {
    "default": frozenset({"retain_longitudinal_modified_dates", "retain_patient_characteristics"}),
    "no date options": frozenset(),
    "full dates, safe private": frozenset(
        {"retain_longitudinal_full_dates", "retain_safe_private"}
    ),
    "uids kept": frozenset({"retain_uids", "retain_longitudinal_modified_dates"}),
}


def awkward_dataset() -> Dataset:
    """The planted CT with dates and UIDs as senders write them, not as pydicom would."""
    ds = planted_dataset()
    ds.add_new(0x00181202, "DA", ["20200101", "20200102", ""])  # Date of Last Calibration
    ds.add_new(0x00080021, "DA", "20240315 ")  # Series Date, a trailing space
    ds.add_new(0x00080022, "DA", "  ")  # Acquisition Date: only padding
    ds.add_new(0x00080023, "DA", "")  # Content Date: empty
    ds.add_new(0x0008002A, "DT", "20240315101500\\20240316")  # Acquisition DateTime, 2 values
    ds.add_new(0x00080018, "UI", UID_ROOT + ".77")  # odd length: NUL-padded on the wire
    ds.add_new(0x0020000E, "UI", UID_ROOT + ".123")
    ds.add_new(0x00081150, "UI", "1.2.840.10008.5.1.4.1.1.2")  # a DICOM UID (kept)
    ds.add_new(0x0040A124, "UI", [UID_ROOT + ".1", "", UID_ROOT + ".22"])  # UID, 3 values
    ds.add_new(0x00200052, "UI", "")  # Frame of Reference UID: empty
    return ds


def _outputs(data: bytes, options: frozenset[str]) -> tuple[object, object, bytes | None]:
    result = Deidentifier(KEY, DeidPolicy(trust_code="RTK", options=options)).process(data)
    return result.ok, result.reason, result.data


@pytest.mark.parametrize("encoding", ["explicit", "implicit", "big endian"])
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_values_from_raw_bytes_equal_pydicoms_conversion(
    monkeypatch: pytest.MonkeyPatch, encoding: str, policy: str
) -> None:
    data = to_bytes(
        awkward_dataset(), implicit=encoding == "implicit", little=encoding != "big endian"
    )
    fast_hits = 0
    raw_text = engine_module._raw_text

    def counting(ds: Dataset, tag: object, vr: str) -> str | None:
        nonlocal fast_hits
        text = raw_text(ds, tag, vr)  # type: ignore[arg-type]
        fast_hits += text is not None
        return text

    monkeypatch.setattr(engine_module, "_raw_text", counting)
    fast = _outputs(data, POLICIES[policy])
    monkeypatch.setattr(engine_module, "_raw_text", lambda *_: None)  # pydicom converts all
    converted = _outputs(data, POLICIES[policy])
    assert fast == converted
    assert fast_hits >= 6  # the path under test was taken, not only the fallback
