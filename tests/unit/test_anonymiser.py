"""One instance never blocks its study: whatever goes wrong with one instance alone holds that
instance back with a reason from the vocabulary; the rest is staged and announced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.quarantine import part10, quarantine_batch
from helpers.receiver_env import KEY, make_trust
from prometheus_client import REGISTRY
from pydicom.uid import DeflatedExplicitVRLittleEndian

import consumers.anonymiser as anonymiser_module
import schemas
from consumers.anonymiser import Anonymiser
from consumers.deid import Deidentifier
from smartbox.bus import MemoryBus
from smartbox.errors import PermanentError, TransientError
from smartbox.store import LocalStore
from smartbox.synthetic import make_ct_study

MIB = 1 << 20
NAME_IN_MESSAGE = "Featherstonehaugh"  # an exception message that quotes the patient


def setup(tmp_path: Path, n: int = 20) -> tuple[Anonymiser, LocalStore, MemoryBus, dict, list]:
    store = LocalStore(tmp_path / "objects")
    bus = MemoryBus()
    trust = make_trust()
    study = make_ct_study(7, series=2, per_series=n // 2)
    originals = [part10(ds) for ds in study.datasets]
    message = quarantine_batch(store, trust.code, originals)
    return (
        Anonymiser(store, bus, KEY, {trust.code: trust}, workers=2),
        store,
        bus,
        message,
        originals,
    )


def staged(bus: MemoryBus) -> list[dict[str, Any]]:
    return [m for m, _headers in bus.messages(bus.topology.queue("exporter"))]


def manifest(store: LocalStore, message: dict[str, Any]) -> dict[str, Any]:
    data = store.get_bytes("staging", message["body"]["manifest_key"])
    return dict(json.loads(data))


def held_metric(trust: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "smartbox_instances_held_back_total", {"trust": trust, "reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_an_engine_raising_on_one_instance_of_twenty_holds_back_that_one_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    anonymiser, store, bus, message, originals = setup(tmp_path)
    bad = originals[6]

    class RaisesOnOne(Deidentifier):
        """``inside``: a bug in the de-identification step; ``outside``: escaping process()."""

        def process(self, raw: bytes):  # type: ignore[no-untyped-def]
            if where == "outside" and raw == bad:
                raise NotImplementedError(f"cannot handle {NAME_IN_MESSAGE}")
            return super().process(raw)

        def _process(self, ds):  # type: ignore[no-untyped-def]
            if where == "inside" and str(ds.SOPInstanceUID) in bad.decode("latin-1"):
                raise NotImplementedError(f"cannot handle {NAME_IN_MESSAGE}")
            return super()._process(ds)

    monkeypatch.setattr(anonymiser_module, "Deidentifier", RaisesOnOne)
    trust = message["trust"]
    anonymiser.handle(message)

    [out] = staged(bus)
    schemas.validate(out)
    body = out["body"]
    assert (body["instances_in"], body["instances_staged"], body["instances_held_back"]) == (
        20,
        19,
        1,
    )
    assert body["held_back_reasons"] == {"deid_error": 1}
    doc = manifest(store, out)
    assert [(h["reason"], h["detail"]) for h in doc["held_back"]] == [
        ("deid_error", "NotImplementedError")
    ]
    assert doc["held_back"][0]["source"] == message_key_tail(store, message, 6)
    assert len(doc["instances"]) == 19
    for entry in doc["instances"]:
        assert store.exists("staging", entry["key"])
    assert NAME_IN_MESSAGE not in json.dumps(doc) + json.dumps(out)
    assert held_metric(trust, "deid_error") == 1


def message_key_tail(store: LocalStore, message: dict[str, Any], n: int) -> str:
    batch = json.loads(store.get_bytes("quarantine", message["body"]["batch_key"]))
    return str(batch["instances"][n]["key"].rsplit("/", 1)[-1])


def test_missing_and_corrupt_originals_are_held_back_the_rest_staged(tmp_path: Path) -> None:
    anonymiser, store, bus, message, _originals = setup(tmp_path)
    batch = json.loads(store.get_bytes("quarantine", message["body"]["batch_key"]))
    keys = [e["key"] for e in batch["instances"]]
    store.delete("quarantine", keys[3])  # lost (e.g. purged by retention before a replay)
    store.put_bytes("quarantine", keys[4], b"not what the receiver recorded")
    anonymiser.handle(message)

    [out] = staged(bus)
    schemas.validate(out)
    assert out["body"]["instances_staged"] == 18
    assert out["body"]["held_back_reasons"] == {"source_checksum_mismatch": 1, "source_missing": 1}
    reasons = {h["source"]: h["reason"] for h in manifest(store, out)["held_back"]}
    assert reasons == {
        keys[3].rsplit("/", 1)[-1]: "source_missing",
        keys[4].rsplit("/", 1)[-1]: "source_checksum_mismatch",
    }


def test_a_batch_none_of_whose_originals_exists_is_dead_lettered_not_announced(
    tmp_path: Path,
) -> None:
    anonymiser, store, bus, message, _originals = setup(tmp_path, n=4)
    batch = json.loads(store.get_bytes("quarantine", message["body"]["batch_key"]))
    for entry in batch["instances"]:
        store.delete("quarantine", entry["key"])
    with pytest.raises(PermanentError):
        anonymiser.handle(message)
    assert staged(bus) == []


class FlakyStore(LocalStore):
    """Storage that is unavailable for one object: a transient failure, not a lost one."""

    unavailable: str = ""

    def get_bytes(self, bucket: str, key: str) -> bytes:
        if key == self.unavailable:
            raise TransientError("storage unavailable")
        return super().get_bytes(bucket, key)


def test_storage_unavailable_for_one_instance_retries_the_message(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "objects")
    bus = MemoryBus()
    trust = make_trust()
    originals = [part10(ds) for ds in make_ct_study(8, series=1, per_series=5).datasets]
    message = quarantine_batch(store, trust.code, originals)
    batch = json.loads(store.get_bytes("quarantine", message["body"]["batch_key"]))
    store.unavailable = batch["instances"][2]["key"]
    anonymiser = Anonymiser(store, bus, KEY, {trust.code: trust}, workers=2)
    with pytest.raises(TransientError):
        anonymiser.handle(message)  # the bus retries, then requeues: never acked
    assert staged(bus) == []

    store.unavailable = ""
    anonymiser.handle(message)
    [out] = staged(bus)
    assert out["body"]["instances_staged"] == 5


def test_the_trusts_inflate_limits_hold_back_a_deflate_bomb_the_rest_staged(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "objects")
    bus = MemoryBus()
    trust = make_trust(max_inflated_bytes=MIB, max_inflate_ratio=10.0)
    datasets = make_ct_study(9, series=1, per_series=4).datasets
    big = datasets[1]
    big.Rows = big.Columns = 1024  # 2 MiB of blank pixels, deflated: beyond the trust's 1 MiB
    big.PixelData = bytes(1024 * 1024 * 2)
    big.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    message = quarantine_batch(store, trust.code, [part10(ds) for ds in datasets])
    Anonymiser(store, bus, KEY, {trust.code: trust}, workers=2).handle(message)
    [out] = staged(bus)
    assert out["body"]["instances_staged"] == 3
    assert out["body"]["held_back_reasons"] == {"decompression_limit": 1}


@pytest.mark.parametrize(
    "spoil",
    [
        lambda b: b["instances"][0].update(sha256="not-a-digest"),
        lambda b: b["instances"][1].pop("size"),
        lambda b: b.update(received_by="someone"),
    ],
    ids=["sha256", "size", "unknown_field"],
)
def test_a_batch_manifest_that_breaks_its_schema_is_dead_lettered_not_staged(
    tmp_path: Path, spoil: Any
) -> None:
    anonymiser, store, bus, message, _originals = setup(tmp_path, n=4)
    key = message["body"]["batch_key"]
    batch = json.loads(store.get_bytes("quarantine", key))
    spoil(batch)
    store.put_bytes("quarantine", key, json.dumps(batch).encode())
    with pytest.raises(PermanentError, match="quarantine.batch"):
        anonymiser.handle(message)
    assert staged(bus) == []


def test_what_the_receiver_recorded_about_the_batch_reaches_the_exporter(tmp_path: Path) -> None:
    anonymiser, store, bus, message, _originals = setup(tmp_path, n=2)
    key = message["body"]["batch_key"]
    batch = json.loads(store.get_bytes("quarantine", key))
    batch.update(calling_aes=["ARCHIVE"], acquired_days_before_arrival=400, origin="retrieved")
    store.put_bytes("quarantine", key, json.dumps(batch).encode())
    anonymiser.handle(message)
    [out] = staged(bus)
    schemas.validate(out)
    source = out["body"]["source"]
    assert source == {
        "calling_aes": ["ARCHIVE"],
        "acquired_days_before_arrival": 400,
        "origin": "retrieved",  # a cohort's C-MOVE: backfill
    }
