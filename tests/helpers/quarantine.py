"""Originals in quarantine as the receiver leaves them, for tests that drive the anonymiser
directly: the instances, their batch manifest and the ``study.arrived`` that announces them."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

import schemas
from smartbox.store import ObjectStore, put_json


def part10(ds: Dataset) -> bytes:
    """A dataset as the Part-10 bytes a PACS would send."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def quarantine_batch(
    store: ObjectStore,
    trust: str,
    originals: Sequence[bytes],
    *,
    bucket: str = "quarantine",
) -> dict[str, Any]:
    """Store ``originals`` and their batch manifest in ``bucket``; return the study.arrived."""
    study_key, batch_id = uuid.uuid4().hex, uuid.uuid4().hex
    store.ensure_bucket(bucket)
    entries = []
    for n, data in enumerate(originals):
        sha = hashlib.sha256(data).hexdigest()
        key = f"{trust}/{study_key}/{n:032x}-{sha[:16]}.dcm"
        store.put_bytes(bucket, key, data)
        entries.append({"key": key, "sha256": sha, "size": len(data), "modality": "CT"})
    batch_key = f"{trust}/{study_key}/batches/{batch_id}.json"
    put_json(
        store,
        bucket,
        batch_key,
        {
            "batch_id": batch_id,
            "trust": trust,
            "study_key": study_key,
            "amendment": False,
            "instances": entries,
        },
    )
    return schemas.make_message(
        "study.arrived",
        trust=trust,
        producer=f"receiver/{trust}@test",
        body={
            "study_key": study_key,
            "bucket": bucket,
            "batch_key": batch_key,
            "batch_id": batch_id,
            "instance_count": len(entries),
            "bytes": sum(e["size"] for e in entries),
            "modalities": ["CT"],
            "amendment": False,
            "first_received_at": "2026-11-28T10:00:00Z",
            "last_received_at": "2026-11-28T10:00:05Z",
        },
    )
