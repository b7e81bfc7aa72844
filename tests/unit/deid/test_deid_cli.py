"""``smartbox deidentify`` on a folder."""

from __future__ import annotations

import json

import pytest
from conftest import KEY, ct_dataset, planted_dataset, to_bytes, write_trust

from consumers.deid.cli import main


@pytest.fixture
def env_key(monkeypatch) -> None:
    monkeypatch.setenv("SMARTBOX_PSEUDONYM_KEY", KEY.secret.decode())
    monkeypatch.delenv("SMARTBOX_PSEUDONYM_KEY_FILE", raising=False)


def _corpus(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "a.dcm").write_bytes(to_bytes(planted_dataset()))
    burned = ct_dataset()
    burned.BurnedInAnnotation = "YES"
    burned.SOPInstanceUID = "1.2.3.4.5"
    (src / "sub" / "b.dcm").write_bytes(to_bytes(burned))
    (src / "junk.txt").write_bytes(b"hello")
    return src


def test_cli_writes_and_summarises(tmp_path, env_key, capsys) -> None:
    src, out = _corpus(tmp_path), tmp_path / "out"
    assert main([str(src), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written"] == 1 and summary["files"] == 3
    assert summary["held_back_by_reason"] == {"burned_in_annotation": 1, "unparseable": 1}
    assert len(list(out.glob("2.25.*.dcm"))) == 1
    assert "burned_in_annotation" in capsys.readouterr().out
    assert main([str(src), "--out", str(out), "--strict"]) == 3


def test_cli_exit_codes(tmp_path, env_key, monkeypatch) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"nope")
    assert main([str(junk), "--out", str(tmp_path / "o")]) == 1
    monkeypatch.delenv("SMARTBOX_PSEUDONYM_KEY")
    assert main([str(junk), "--out", str(tmp_path / "o")]) == 2


def test_cli_reads_trust_file(tmp_path, env_key) -> None:
    trusts = tmp_path / "trusts"
    write_trust(
        trusts,
        "RX1",
        '[deidentification]\noptions = ["retain_longitudinal_full_dates"]\n',
        head='nhs_number_attribute = "OtherPatientIDs"\n',
    )
    src = tmp_path / "in.dcm"
    src.write_bytes(to_bytes(ct_dataset()))
    out = tmp_path / "out"
    assert main([str(src), "--out", str(out), "--trust", "RX1", "--trusts-dir", str(trusts)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trust"] == "RX1"
    assert summary["options"] == ["retain_longitudinal_full_dates"]
    assert summary["nhs_number_fallbacks"] == 1  # PatientID holds it, not OtherPatientIDs
    assert main([str(src), "--out", str(out), "--trust", "NOPE", "--trusts-dir", str(trusts)]) == 2


def test_cli_applies_mask_rules_from_trust_file(tmp_path, env_key) -> None:
    trusts = tmp_path / "trusts"
    write_trust(
        trusts,
        "RX2",
        "[[deidentification.mask_rules]]\n"
        'name = "acme"\nmanufacturer = "ACME Medical"\nmodel = "Sono 1"\nmodality = "US"\n'
        "rows = 16\ncolumns = 16\nrectangles = [[0, 0, 16, 4]]\n",
    )
    ds = ct_dataset()
    ds.Modality, ds.ManufacturerModelName = "US", "Sono 1"
    src = tmp_path / "in.dcm"
    src.write_bytes(to_bytes(ds))
    out = tmp_path / "out"
    args = [str(src), "--out", str(out), "--trust", "RX2", "--trusts-dir", str(trusts)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written"] == 1 and summary["pixels_masked"] == 1
    write_trust(trusts, "RX2", '[[deidentification.mask_rules]]\nmanufacturer = "ACME"\n')
    assert main(args) == 2  # model, rows, ... missing: a configuration error, named


def test_cli_ocr_without_tesseract_is_a_configuration_error(
    tmp_path, env_key, monkeypatch, capsys
) -> None:
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    trusts = tmp_path / "trusts"
    write_trust(trusts, "RX3", "[deidentification]\nocr = true\n")
    src = tmp_path / "in.dcm"
    src.write_bytes(to_bytes(ct_dataset()))
    args = [str(src), "--out", str(tmp_path / "o"), "--trust", "RX3", "--trusts-dir", str(trusts)]
    assert main(args) == 2
    assert "tesseract" in capsys.readouterr().err
