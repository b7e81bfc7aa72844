"""``smartbox deidentify`` on a folder."""

from __future__ import annotations

import json

import pytest
from conftest import KEY, ct_dataset, planted_dataset, to_bytes, write_trust

from smartbox.app.deidentify_cli import main


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


def test_copies_of_one_file_are_reported_not_silently_overwritten(
    tmp_path, env_key, capsys
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    data = to_bytes(ct_dataset())
    for n in range(400):
        (src / f"copy{n:03d}.dcm").write_bytes(data)
    assert main([str(src), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["files"], summary["de_identified"], summary["written"]) == (400, 400, 1)
    assert summary["duplicates"] == 399 and summary["collisions"] == 0
    assert len(list(out.glob("*.dcm"))) == 1
    printed = capsys.readouterr().out
    assert "400 of 400 file(s) de-identified" in printed
    assert "1 instance(s) written" in printed and "399 duplicate(s)" in printed


def test_two_versions_of_one_instance_are_both_kept_and_reported(tmp_path, env_key, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    first, second = ct_dataset(), ct_dataset()
    second.PixelData = bytes(len(first.PixelData))  # a corrected version: same SOP UID
    (src / "a.dcm").write_bytes(to_bytes(first))
    (src / "b.dcm").write_bytes(to_bytes(second))
    assert main([str(src), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["written"], summary["collisions"], summary["duplicates"]) == (2, 1, 0)
    outputs = sorted(p.name for p in out.glob("*.dcm"))
    assert len(outputs) == 2 and outputs[0].split("-")[0] == outputs[1].split(".dcm")[0]
    [collision] = summary["collision_files"]
    assert collision["input"].endswith("b.dcm") and collision["same_uid_as"].endswith("a.dcm")
    printed = capsys.readouterr().out
    assert "1 collision(s)" in printed and "b.dcm" in printed


def test_the_held_back_list_is_printed_with_reasons(tmp_path, env_key, capsys) -> None:
    src, out = _corpus(tmp_path), tmp_path / "out"
    assert main([str(src), "--out", str(out), "--strict"]) == 3
    printed = capsys.readouterr().out
    lines = [ln.split() for ln in printed.splitlines()]
    assert [str(src / "sub" / "b.dcm"), "burned_in_annotation"] in lines
    assert [str(src / "junk.txt"), "unparseable"] in lines


def test_progress_goes_to_stderr_only_when_asked_or_on_a_terminal(
    tmp_path, env_key, capsys
) -> None:
    src, out = _corpus(tmp_path), tmp_path / "out"
    assert main([str(src), "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""  # not a terminal, not asked: nothing
    assert main([str(src), "--out", str(out), "--progress"]) == 0
    captured = capsys.readouterr()
    assert "3/3 files" in captured.err.splitlines()[-1]
    assert "3/3" not in captured.out


def test_worker_processes_give_the_same_outputs_names_and_summary(tmp_path, env_key) -> None:
    """Forked workers hand back outcomes in input order: the first input of an instance, each
    duplicate and collision, every output's name and bytes and the summary are the same as
    in one process."""
    src = _corpus(tmp_path)  # one to write, one held back, one unparseable
    copy = ct_dataset()
    copy.SOPInstanceUID = "1.2.826.0.1.3680043.9.7.1"
    for n in range(30):
        (src / f"copy{n:02d}.dcm").write_bytes(to_bytes(copy))
    copy.PixelData = bytes(len(copy.PixelData))  # another version of the same instance
    (src / "copy15b.dcm").write_bytes(to_bytes(copy))
    results = {}
    for workers in ("1", "3"):
        out = tmp_path / f"out{workers}"
        assert main([str(src), "--out", str(out), "--workers", workers]) == 0
        results[workers] = (
            {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".dcm"},
            json.loads((out / "summary.json").read_text()),
            sorted(p.name for p in out.iterdir()),
        )
    one, three = results["1"], results["3"]
    assert one[2] == three[2] and one[1] == three[1]
    assert one[0] == three[0], "the same bytes under every name"
    summary = one[1]
    assert (summary["files"], summary["duplicates"], summary["collisions"]) == (34, 29, 1)
    assert summary["written"] == 3 and summary["held_back"] == 2
    assert not any(n.startswith(".") for n in one[2]), "no scratch folder left"
    [collision] = summary["collision_files"]
    assert collision["input"].endswith("copy15b.dcm")
    assert collision["same_uid_as"].endswith("copy00.dcm"), "the first input in order wins"


def test_workers_must_be_a_number_of_processes(tmp_path, env_key, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "many"])
    assert exited.value.code == 2
    assert "--workers: expected a number of processes" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, env_key, capsys) -> None:
    src = _corpus(tmp_path)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert main([str(src), "--out", str(blocked / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smartbox deidentify: cannot write to") and len(err.splitlines()) == 1


def test_ctrl_c_is_one_line_and_exit_130_with_no_scratch_left(
    tmp_path, env_key, capsys, monkeypatch
) -> None:
    from consumers.deid.deidentifier import Deidentifier

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for n in range(5):
        ds = ct_dataset()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7.2.{n}"
        (src / f"f{n}.dcm").write_bytes(to_bytes(ds))
    real, calls = Deidentifier.process, []

    def interrupted_on_the_third(self, raw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, raw)

    monkeypatch.setattr(Deidentifier, "process", interrupted_on_the_third)
    assert main([str(src), "--out", str(out), "--workers", "1"]) == 130
    err = capsys.readouterr().err.strip()
    expected = f"interrupted after 2 of 5 file(s); 2 written to {out}, no summary.json"
    assert err == f"smartbox deidentify: {expected}"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in out.glob("*.dcm"))
    assert len(list(out.glob("*.dcm"))) == 2 and not (out / "summary.json").exists()
