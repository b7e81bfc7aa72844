"""One study, one patient: instances of a study that disagree on who the patient is are held
back together (``patient_identity_conflict``), within a batch and across batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.quarantine import part10, quarantine_batch
from helpers.receiver_env import KEY, make_trust
from pydicom.dataset import Dataset

from consumers.anonymiser import Anonymiser
from smartbox.bus import MemoryBus
from smartbox.store import LocalStore
from smartbox.synthetic import make_ct_study

CONFLICT = "patient_identity_conflict"


TRUST = make_trust()


def run(tmp_path: Path, datasets: list[Dataset], store: LocalStore | None = None):
    store = store or LocalStore(tmp_path / "objects")
    bus = MemoryBus()
    trust = TRUST
    message = quarantine_batch(store, trust.code, [part10(ds) for ds in datasets])
    Anonymiser(store, bus, KEY, {trust.code: trust}, workers=2).handle(message)
    [(out, _h)] = bus.messages(bus.topology.queue("exporter"))
    manifest = json.loads(store.get_bytes("staging", out["body"]["manifest_key"]))
    return store, out["body"], manifest


def staged_objects(store: LocalStore) -> list[str]:
    return [k for k in store.list_keys("staging") if k.endswith(".dcm")]


def held_reasons(manifest: dict[str, Any]) -> list[str]:
    return [h["reason"] for h in manifest["held_back"]]


def study(seed: int = 11) -> list[Dataset]:
    return list(make_ct_study(seed, series=2, per_series=3).datasets)


def test_a_misfiled_instance_is_held_back_and_the_consistent_rest_staged(tmp_path: Path) -> None:
    for change in ("PatientName", "PatientID", "PatientBirthDate"):
        datasets = study()
        other = make_ct_study(12, series=1, per_series=1).datasets[0]
        setattr(datasets[4], change, getattr(other, change))
        store, body, manifest = run(tmp_path / change, datasets)
        assert body["instances_staged"] == 5 and held_reasons(manifest) == [CONFLICT], change
        assert len({i["patient"] for i in manifest["instances"]}) == 1
        assert len(staged_objects(store)) == 5  # the misfiled one left nothing behind


def test_a_merged_study_is_held_back_whole(tmp_path: Path) -> None:
    """Half one patient, half another: no side is the study's, nothing is staged."""
    for change in ("PatientName", "PatientID", "PatientBirthDate"):
        datasets = study()
        other = make_ct_study(12, series=1, per_series=1).datasets[0]
        for ds in datasets[3:]:
            setattr(ds, change, getattr(other, change))
        store, body, manifest = run(tmp_path / change, datasets)
        assert manifest["instances"] == [] and body["instances_staged"] == 0, change
        assert held_reasons(manifest) == [CONFLICT] * 6
        assert body["held_back_reasons"] == {CONFLICT: 6}
        assert staged_objects(store) == []  # nothing left behind under one pseudonym


def test_another_nhs_number_in_the_nhs_attribute_is_a_conflict(tmp_path: Path) -> None:
    datasets = study()[:2]
    datasets[1].PatientID = "9434765919"  # valid, and not this patient's: one against one
    _store, _body, manifest = run(tmp_path, datasets)
    assert held_reasons(manifest) == [CONFLICT] * 2


def test_spelling_and_missing_values_are_not_conflicts(tmp_path: Path) -> None:
    datasets = study()
    datasets[0].PatientName = str(datasets[0].PatientName).upper() + "^^"
    del datasets[2].PatientBirthDate  # a series without it: unknown, not different
    datasets[3].PatientName = ""
    _store, body, manifest = run(tmp_path, datasets)
    assert body["instances_staged"] == 6 and manifest["held_back"] == []


def test_a_later_batch_of_another_patient_is_held_back(tmp_path: Path) -> None:
    first = study()
    store, body, manifest = run(tmp_path, first[:3])
    assert body["instances_staged"] == 3
    kept = staged_objects(store)
    later = first[3:]
    other = make_ct_study(12, series=1, per_series=1).datasets[0]
    for ds in later:  # same study UID, another patient's ID (a merged study)
        ds.PatientID = other.PatientID
    store, body, manifest = run(tmp_path, later, store)
    assert body["instances_staged"] == 0 and held_reasons(manifest) == [CONFLICT] * 3
    assert staged_objects(store) == kept  # the first batch stays as it was
    # the same patient's later batch is staged as usual
    store, body, _manifest = run(tmp_path, study()[3:], store)
    assert body["instances_staged"] == 3


def test_manifest_records_cleared_overlay_bits(tmp_path: Path) -> None:
    datasets = study()[:2]
    for ds in datasets:  # 12-bit samples with nothing above bit 11 ...
        pixels = bytearray(ds.PixelData)
        pixels[1::2] = bytes(b & 0x0F for b in pixels[1::2])
        ds.PixelData = bytes(pixels)
    pixels = bytearray(datasets[0].PixelData)
    pixels[1] |= 0x10  # ... but bit 12 of the first sample of one: an overlay bit
    datasets[0].PixelData = bytes(pixels)
    _store, _body, manifest = run(tmp_path, datasets)
    counts = sorted(i.get("pixel_bits_cleared", 0) for i in manifest["instances"])
    assert counts == [0, 1]


def test_smartbox_deidentify_applies_the_same_study_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smartbox.app.deidentify_cli import main

    monkeypatch.setenv("SMARTBOX_PSEUDONYM_KEY", KEY.secret.decode())
    monkeypatch.delenv("SMARTBOX_PSEUDONYM_KEY_FILE", raising=False)
    datasets = study()
    for ds in datasets[:3]:  # a merged study: no majority
        ds.PatientName = "Someone^Else"
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for n, ds in enumerate(datasets):
        (src / f"{n}.dcm").write_bytes(part10(ds))
    (src / "other.dcm").write_bytes(part10(study(seed=30)[0]))  # another study: untouched
    assert main([str(src), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["held_back_by_reason"] == {CONFLICT: 6}
    assert len(list(out.glob("2.25.*.dcm"))) == 1
