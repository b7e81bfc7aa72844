"""One policy, one owner: the pipeline (the real ``Anonymiser``) and ``smartbox deidentify``
build the policy and read the key through the same code, so the same input, trust file,
options and key give byte-identical output; check-config reports what would stop them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import ct_dataset, planted_dataset, to_bytes, write_trust
from pydicom.uid import DeflatedExplicitVRLittleEndian

from consumers.deid import DeidConfigError, PolicyBuilder
from consumers.deid.policy import accepted_trust_keys
from smartbox.app import cli, factories
from smartbox.bus import MemoryBus
from smartbox.errors import ConfigError, PermanentError
from smartbox.settings import Settings
from smartbox.store import LocalStore
from smartbox.trusts import load_trust

ROOT = Path(__file__).resolve().parents[3]
SECRET = "pipeline-and-cli-key-0123456789"
#: every trust-file key the docs list, set to something other than its default
FULL = """
[deidentification]
options = ["retain_longitudinal_modified_dates", "clean_descriptors", "retain_device_identity"]
ocr = false
ocr_scope = "all"
ocr_match = "any_text"
ocr_max_frames = 2

[[deidentification.mask_rules]]
name = "sono-header"
manufacturer = "ACME Medical"
model = "Sono 1"
modality = "US"
rows = 16
columns = 16
rectangles = [[0, 0, 16, 4]]
"""
FULL_HEAD = (
    'nhs_number_attribute = "OtherPatientIDs"\nmax_inflated_bytes = 2097152\n'
    "max_inflate_ratio = 50\n"
)


def _inputs() -> list[bytes]:
    planted = planted_dataset()
    plain = ct_dataset()
    plain.SOPInstanceUID = plain.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.77.1"
    plain.OtherPatientIDs = "943 476 5919"
    deflated = ct_dataset(rows=32, cols=32)
    deflated.SOPInstanceUID = deflated.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.77.2"
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    bomb = ct_dataset(rows=1024, cols=1024)  # 2 MiB of zeros: beyond max_inflated_bytes
    bomb.SOPInstanceUID = bomb.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.77.3"
    bomb.PixelData = bytes(1024 * 1024 * 2)
    bomb.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    sono = ct_dataset()
    sono.SOPInstanceUID = sono.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.77.4"
    sono.Modality, sono.ManufacturerModelName = "US", "Sono 1"
    burned = ct_dataset()
    burned.SOPInstanceUID = burned.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.77.5"
    burned.BurnedInAnnotation = "YES"
    return [to_bytes(ds) for ds in (planted, plain, deflated, bomb, sono, burned)]


def production_anonymiser(
    store: LocalStore, bus: MemoryBus, env: dict[str, str] | None = None
) -> Any:
    """The anonymiser as ``smartbox anonymise`` builds it (the app layer's factories)."""
    wiring = factories.Wiring.from_settings(Settings.from_env(env), bus, store, environ=env)
    return factories.anonymiser(wiring, environ=env)


def _pipeline(tmp_path: Path, code: str, env: dict[str, str], inputs: list[bytes]) -> Any:
    from helpers.quarantine import quarantine_batch

    store, bus = LocalStore(tmp_path / "objects"), MemoryBus()
    anonymiser = production_anonymiser(store, bus, env)
    anonymiser.handle(quarantine_batch(store, code, inputs))
    [(staged, _headers)] = bus.messages(bus.topology.queue("exporter"))
    manifest = json.loads(store.get_bytes("staging", staged["body"]["manifest_key"]))
    out = {
        i["sop_instance_uid"]: store.get_bytes("staging", i["key"]) for i in manifest["instances"]
    }
    return out, sorted(h["reason"] for h in manifest["held_back"]), manifest


def _deidentify(tmp_path: Path, code: str, env: dict[str, str], inputs: list[bytes], mp) -> Any:
    src, out = tmp_path / "samples", tmp_path / "out"
    src.mkdir(parents=True)
    for n, data in enumerate(inputs):
        (src / f"{n}.dcm").write_bytes(data)
    for name, value in env.items():
        mp.setenv(name, value)
    assert cli.main(["deidentify", str(src), "--out", str(out), "--trust", code]) == 0
    summary = json.loads((out / "summary.json").read_text())
    written = {p.stem: p.read_bytes() for p in out.glob("2.25.*.dcm")}
    return written, sorted(h["reason"] for h in summary["held_back_files"]), summary


@pytest.mark.parametrize("key_source", ["variable", "file"])
@pytest.mark.parametrize("code", ["FULL", "DEFLT"])
def test_pipeline_and_deidentify_give_byte_identical_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_source: str, code: str
) -> None:
    trusts = tmp_path / "trusts"
    write_trust(trusts, "FULL", FULL, head=FULL_HEAD)
    write_trust(trusts, "DEFLT")  # no [deidentification]: SMARTBOX_DEID_OPTIONS applies
    env = {
        "SMARTBOX_TRUSTS_DIR": str(trusts),
        "SMARTBOX_DEID_OPTIONS": "retain_longitudinal_modified_dates, clean_descriptors",
        "SMARTBOX_DEID_MAX_DATE_SHIFT_DAYS": "30",
        "SMARTBOX_PSEUDONYM_KEY_VERSION": " k3 ",
    }
    if key_source == "variable":
        env["SMARTBOX_PSEUDONYM_KEY"] = f"  {SECRET}\t "
    else:
        (tmp_path / "key").write_text(f" {SECRET}  \r\n")
        env["SMARTBOX_PSEUDONYM_KEY_FILE"] = str(tmp_path / "key")
    for name in ("SMARTBOX_PSEUDONYM_KEY", "SMARTBOX_PSEUDONYM_KEY_FILE", "SMARTBOX_SECRETS_FILE"):
        monkeypatch.delenv(name, raising=False)
    inputs = _inputs()

    staged, staged_held, manifest = _pipeline(tmp_path / "p", code, env, inputs)
    written, written_held, summary = _deidentify(tmp_path / "c", code, env, inputs, monkeypatch)

    assert staged == written  # same instances, same pseudonymous UIDs, same bytes
    assert staged_held == written_held
    assert manifest["deidentification"]["options"] == summary["options"]
    assert manifest["key_version"] == summary["key_version"] == "k3"
    if code == "FULL":
        assert len(staged) == 4 and staged_held == ["burned_in_annotation", "decompression_limit"]
        # nhs_number_attribute = OtherPatientIDs: only `plain` holds a valid one there
        assert summary["pixels_masked"] == 1 and summary["nhs_number_fallbacks"] == 3
        assert summary["options"] == sorted(
            ["retain_longitudinal_modified_dates", "clean_descriptors", "retain_device_identity"]
        )
    else:
        assert summary["options"] == ["clean_descriptors", "retain_longitudinal_modified_dates"]
    # the surrounding whitespace is not the key: the same output as the bare secret gives
    monkeypatch.delenv("SMARTBOX_PSEUDONYM_KEY_FILE", raising=False)
    bare = {**{k: v for k, v in env.items() if "KEY" not in k}, "SMARTBOX_PSEUDONYM_KEY": SECRET}
    bare["SMARTBOX_PSEUDONYM_KEY_VERSION"] = "k3"
    assert _pipeline(tmp_path / "b", code, bare, inputs)[0] == staged


def test_short_keys_and_bad_versions_are_refused_by_every_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_trust(tmp_path / "trusts", "RTK")
    sample = tmp_path / "a.dcm"
    sample.write_bytes(to_bytes(ct_dataset()))
    monkeypatch.setenv("SMARTBOX_TRUSTS_DIR", str(tmp_path / "trusts"))
    monkeypatch.delenv("SMARTBOX_PSEUDONYM_KEY_FILE", raising=False)
    for key, version, what in [
        ("  fifteen-bytes!  ", "k1", "too short"),
        (SECRET, "k 2", "SMARTBOX_PSEUDONYM_KEY_VERSION"),
    ]:
        monkeypatch.setenv("SMARTBOX_PSEUDONYM_KEY", key)
        monkeypatch.setenv("SMARTBOX_PSEUDONYM_KEY_VERSION", version)
        assert cli.main(["deidentify", str(sample), "--out", str(tmp_path / "o")]) == 2
        assert what in capsys.readouterr().err
        assert cli.main(["check-config", "--role", "anonymise"]) == 2
        assert what in capsys.readouterr().err
        with pytest.raises(ConfigError, match=what):
            production_anonymiser(LocalStore(tmp_path / "s"), MemoryBus())


def test_ocr_without_tesseract_stops_the_anonymiser_at_start_not_per_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers.quarantine import quarantine_batch

    monkeypatch.setattr(shutil, "which", lambda name: None)  # tesseract is not installed
    trusts = tmp_path / "trusts"
    write_trust(trusts, "ROCR", "[deidentification]\nocr = true\n")
    monkeypatch.setenv("SMARTBOX_TRUSTS_DIR", str(trusts))
    monkeypatch.setenv("SMARTBOX_PSEUDONYM_KEY", SECRET)
    monkeypatch.delenv("SMARTBOX_PSEUDONYM_KEY_FILE", raising=False)
    # smartbox anonymise runs these very checks before it connects to anything
    assert cli.main(["check-config", "--role", "anonymise"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "ROCR.toml" in lines[0] and "tesseract" in lines[0], lines
    assert cli.main(["anonymise"]) == 2
    assert "tesseract" in capsys.readouterr().err
    # a trust file switched to OCR while running: that message is dead-lettered at once
    store = LocalStore(tmp_path / "objects")
    anonymiser = production_anonymiser(store, MemoryBus())
    with pytest.raises(PermanentError, match="tesseract"):
        anonymiser.handle(quarantine_batch(store, "ROCR", [to_bytes(ct_dataset())]))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('[deidentification]\noptions = ["retain_everything"]\n', "deidentification.options"),
        ("[deidentification]\nocr_max_frames = 0\n", "deidentification.ocr_max_frames"),
        ('[deidentification]\nocr = "yes"\n', "deidentification.ocr"),
        ("[deidentification]\nmax_date_shift_days = 30\n", "deidentification.max_date_shift_days"),
        ("[deidentification]\nocr_langs = 'eng'\n", "deidentification.ocr_langs"),
        (
            "[[deidentification.mask_rules]]\nmanufacturer = 'A'\nmodel = 'B'\nrows = 0\n"
            "columns = 4\nrectangles = [[0, 0, 1, 1]]\n",
            "deidentification.mask_rules[0].rows",
        ),
    ],
)
def test_a_bad_deidentification_field_is_named_alike_by_every_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    body: str, field: str,
) -> None:  # fmt: skip
    trusts = tmp_path / "trusts"
    path = write_trust(trusts, "RBAD", body)
    with pytest.raises(DeidConfigError) as err:
        PolicyBuilder().for_trust(load_trust(trusts, "RBAD"))
    assert isinstance(err.value, ConfigError)  # under the project's configuration error
    assert str(path) in str(err.value) and field in str(err.value)
    monkeypatch.setenv("SMARTBOX_TRUSTS_DIR", str(trusts))
    monkeypatch.setenv("SMARTBOX_PSEUDONYM_KEY", SECRET)
    sample = tmp_path / "a.dcm"
    sample.write_bytes(to_bytes(ct_dataset()))
    assert (
        cli.main(["deidentify", str(sample), "--out", str(tmp_path / "o"), "--trust", "RBAD"]) == 2
    )
    assert field in capsys.readouterr().err
    assert cli.main(["check-config", "--role", "anonymise"]) == 2
    assert [ln for ln in capsys.readouterr().err.splitlines() if field in ln]


def test_deployment_options_are_validated_where_they_are_read() -> None:
    with pytest.raises(DeidConfigError, match="SMARTBOX_DEID_OPTIONS"):
        PolicyBuilder.from_env({"SMARTBOX_DEID_OPTIONS": "retain_everything"})
    with pytest.raises(DeidConfigError, match="SMARTBOX_DEID_MAX_DATE_SHIFT_DAYS"):
        PolicyBuilder.from_env({"SMARTBOX_DEID_MAX_DATE_SHIFT_DAYS": "0"})
    built = PolicyBuilder.from_env({"SMARTBOX_DEID_OPTIONS": "retain_uids, retain_safe_private"})
    assert built.default_options == {"retain_uids", "retain_safe_private"}


def _documented(text: str, heading: str) -> set[str]:
    """Trust-file keys in the configuration table after ``heading``: rows whose second
    column is ``trust file``; ``[deidentification] x`` spelt ``deidentification.x``."""
    section = text[text.index(heading) :]
    table = next(b for b in section.split("\n\n") if b.startswith("| setting"))
    keys: set[str] = set()
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) >= 2 and cells[1] == "trust file":
            keys |= {_spelt(k) for k in re.findall(r"`([^`]+)`", cells[0])}
    return keys


def _spelt(key: str) -> str:
    key = key.strip("[] ")
    return key.replace("deidentification] ", "deidentification.")


def test_the_documented_trust_file_keys_are_exactly_the_accepted_ones() -> None:
    deid_doc = (ROOT / "docs" / "deidentification.md").read_text()
    assert _documented(deid_doc, "## Configuration") == accepted_trust_keys()
    anonymiser_doc = (ROOT / "docs" / "anonymiser.md").read_text()
    [row] = [ln for ln in anonymiser_doc.splitlines() if ln.startswith("| config |")]
    listed = row[row.index("trust files (") : row.index(")", row.index("trust files ("))]
    assert {_spelt(k) for k in re.findall(r"`([^`]+)`", listed)} == accepted_trust_keys()
