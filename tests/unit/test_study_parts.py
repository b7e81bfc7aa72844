"""Manifest parts of a batch announced in chunks (consumers.study_parts): merged in index order
into one record, and one study, one patient across chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from consumers import study_parts
from consumers.study_parts import Staged
from smartbox import layout
from smartbox.store import LocalStore

BATCH, STUDY = "b" * 32, "c" * 32
UID = "2.25.123456789"
PROVENANCE = {"deidentification": {"profile": "p"}, "key_version": "k1", "code_version": "0"}


def entry(n: int, patient: str) -> dict[str, Any]:
    return {
        "key": f"RTK/{UID}/2.25.{n + 1}-{'0' * 16}.dcm",
        "sha256": f"{n:064x}",
        "size": 10,
        "study_uid": UID,
        "series_uid": "2.25.9",
        "patient": patient,
    }


def write(store: LocalStore, index: int, count: int, entries: list[dict[str, Any]]) -> None:
    body = {
        "batch_id": BATCH,
        "study_key": STUDY,
        "chunk": {"index": index, "count": count, "start": 0, "stop": 1},
    }
    sources = [f"{n:032x}-{'1' * 16}.dcm" for n in range(len(entries))]
    staged = Staged(UID, entries, sources, [], 0)
    study_parts.write_part(store, "staging", body, "RTK", staged, PROVENANCE)


def test_parts_merge_in_index_order_whatever_the_order_written(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.ensure_bucket("staging")
    a, b = "A" * 32, "A" * 32
    write(store, 1, 2, [entry(2, a), entry(3, a)])
    assert len(study_parts.part_keys(store, "staging", "RTK", BATCH, 2)) == 1
    write(store, 0, 2, [entry(0, b), entry(1, b)])
    keys = study_parts.part_keys(store, "staging", "RTK", BATCH, 2)
    assert keys == [layout.manifest_part_key("RTK", BATCH, i, 2) for i in (0, 1)]
    merged, provenance, odd = study_parts.merge(store, "staging", keys)
    assert [e["sha256"] for e in merged.instances] == [f"{n:064x}" for n in range(4)]
    assert (merged.study_uid, provenance, odd, merged.held_back) == (UID, PROVENANCE, [], [])
    again, _p, _o = study_parts.merge(store, "staging", keys)
    assert again == merged  # deterministic: two finishers write the same manifest


def test_a_chunk_of_another_patient_is_held_back_at_the_merge(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.ensure_bucket("staging")
    write(store, 0, 3, [entry(0, "A" * 32), entry(1, "A" * 32)])
    write(store, 1, 3, [entry(2, "A" * 32)])
    write(store, 2, 3, [entry(3, "B" * 32)])  # each chunk agrees with itself, not the batch
    keys = study_parts.part_keys(store, "staging", "RTK", BATCH, 3)
    merged, _p, odd = study_parts.merge(store, "staging", keys)
    assert [e["patient"] for e in merged.instances] == ["A" * 32] * 3
    assert merged.held_back == [
        {"source": f"{0:032x}-{'1' * 16}.dcm", "reason": "patient_identity_conflict"}
    ]
    assert odd == [entry(3, "B" * 32)["key"]]
