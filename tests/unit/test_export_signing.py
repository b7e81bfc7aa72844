"""Signed batches: the national side rejects a tampered batch, per study, with the reason."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from helpers.export import ExportRig, stage_study

from consumers.ingest import NationalIngest
from smartbox.errors import ConfigError
from smartbox.signing import Signer, Verifier
from smartbox.store import LocalStore


def exported(tmp_path: Path) -> tuple[ExportRig, dict[str, Any]]:
    rig = ExportRig(LocalStore(tmp_path / "l"), LocalStore(tmp_path / "n"))
    for n in range(2):
        rig.exporter.handle(stage_study(rig.store, "RTK", n))
    rig.exporter.export_pass()
    [batch] = rig.drain("national.ingest")
    return rig, batch


def answer(rig: ExportRig, batch: dict[str, Any], ingest: NationalIngest | None = None) -> dict:
    (ingest or rig.ingest).handle(batch)
    [receipt] = rig.drain("export.receipts")
    return receipt["body"]


def reasons(receipt: dict[str, Any]) -> set[tuple[str, str | None]]:
    return {(s["status"], s.get("reason")) for s in receipt["studies"]}


def test_untampered_batch_is_accepted(tmp_path: Path) -> None:
    rig, batch = exported(tmp_path)
    assert reasons(answer(rig, batch)) == {("accepted", None)}


def test_one_byte_of_one_object_rejects_that_study_only(tmp_path: Path) -> None:
    rig, batch = exported(tmp_path)
    manifest = json.loads(rig.national.get_bytes("national", batch["body"]["manifest_key"]))
    key = manifest["studies"][0]["objects"][1]["key"]
    data = bytearray(rig.national.get_bytes("national", key))
    data[0] ^= 0x01
    rig.national.put_bytes("national", key, bytes(data))
    receipt = answer(rig, batch)
    assert receipt["status"] == "partial"
    assert sorted(
        (s["export_id"], s["status"], s.get("reason")) for s in receipt["studies"]
    ) == sorted(
        [
            (manifest["studies"][0]["export_id"], "rejected", "checksum_mismatch"),
            (manifest["studies"][1]["export_id"], "accepted", None),
        ]
    )
    assert not rig.national.exists("archive", key)


def test_tampered_manifest_is_rejected_with_the_reason(tmp_path: Path) -> None:
    rig, batch = exported(tmp_path)
    key = batch["body"]["manifest_key"]
    original = rig.national.get_bytes("national", key)
    doc = json.loads(original)
    doc["studies"][0]["objects"][0]["size"] += 1  # one field of the manifest
    forged = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    rig.national.put_bytes("national", key, forged)
    assert reasons(answer(rig, batch)) == {("rejected", "manifest_sha256_mismatch")}
    # an attacker who also rewrites the message's sha256 still lacks the signing key
    batch["body"]["manifest_sha256"] = hashlib.sha256(forged).hexdigest()
    batch["body"]["batch_id"] = "f" * 32  # not seen before
    assert reasons(answer(rig, batch)) == {("rejected", "signature_invalid")}


def test_batch_signed_by_another_key_is_rejected(tmp_path: Path) -> None:
    rig, batch = exported(tmp_path)
    stranger = NationalIngest(
        rig.national, rig.bus, verifier=Signer.generate().verifier(), archive_bucket="archive"
    )  # noqa: E501
    assert reasons(answer(rig, batch, stranger)) == {("rejected", "unknown_signing_key")}


def test_a_republished_batch_is_answered_again_and_stored_once(tmp_path: Path) -> None:
    rig, batch = exported(tmp_path)
    first = answer(rig, batch)
    key = json.loads(rig.national.get_bytes("national", batch["body"]["manifest_key"]))["studies"][
        0
    ]["objects"][0]["key"]  # noqa: E501
    rig.national.delete("archive", key)  # a second ingest would store it again: it must not
    assert answer(rig, batch) == first
    assert not rig.national.exists("archive", key)


def test_keys_come_from_the_environment_and_the_national_side_needs_only_the_public_key(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError):
        Signer.from_env({})
    with pytest.raises(ConfigError):
        Signer.from_env({"SMARTBOX_EXPORT_SIGNING_KEY": "not hex"})
    seed = tmp_path / "seed"
    seed.write_text("ab" * 32)
    signer = Signer.from_env({"SMARTBOX_EXPORT_SIGNING_KEY_FILE": str(seed)})
    verifier = Verifier.from_env({"SMARTBOX_EXPORT_VERIFY_KEY": signer.public_hex()})
    assert verifier.verify(b"manifest", signer.sign(b"manifest"))
    assert not verifier.verify(b"manifest!", signer.sign(b"manifest"))
    assert "ab" * 32 not in repr(signer)
