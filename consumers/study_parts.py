"""One study manifest from many anonymisers: the parts of a batch announced in chunks.

The receiver announces a big batch in chunks (``study.arrived`` v2, at most
``announce_chunk_instances`` instances each) so that every anonymiser replica takes a share.
The batch must still become one study manifest, written once, announced once. Each chunk's
anonymiser writes what it staged as a *part* (``layout.manifest_part_key``: index of count,
schema ``staging.part``), then lists the batch's parts: the one that finds all of them merges
them, in index order, into the manifest. S3 listings are strongly consistent (AWS, MinIO,
SeaweedFS), so whichever part is written last, its writer sees every part; when two writers
finish together both merge, and since the merge depends only on the parts, both write the
same bytes (the exporter records a study version once per batch id, so a second
``study.staged`` is a redelivery to it). A redelivered chunk rewrites its part with the same
content and, finding every part, announces again: at least once, never lost. Parts are deleted
once ``study.staged`` is confirmed.

Across chunks, one study is one patient too: an instance whose patient pseudonym differs from
the batch's majority (or every one, when no pseudonym has a majority) is held back
(``patient_identity_conflict``) at the merge, as ``consumers.identity_check`` does within a
chunk with the full fingerprints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import schemas
from consumers.deid.reasons import Reason
from smartbox import layout
from smartbox.errors import PermanentError, SchemaError
from smartbox.store import ObjectStore, get_json, put_json


@dataclass
class Staged:
    """What one chunk (or, merged, the whole batch) staged and held back."""

    study_uid: str | None = None
    instances: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    held_back: list[dict[str, str]] = field(default_factory=list)
    fallbacks: int = 0

    def reasons(self) -> Counter[Reason]:
        return Counter(Reason(item["reason"]) for item in self.held_back)


def write_part(
    store: ObjectStore,
    bucket: str,
    body: dict[str, Any],
    trust: str,
    staged: Staged,
    provenance: dict[str, Any],
) -> None:
    """Store one chunk's part (same content on a redelivery: idempotent)."""
    chunk = body["chunk"]
    part = {
        "trust": trust,
        "batch_id": body["batch_id"],
        "study_key": body["study_key"],
        "index": chunk["index"],
        "count": chunk["count"],
        "study_uid": staged.study_uid,
        "instances": staged.instances,
        "sources": staged.sources,
        "held_back": staged.held_back,
        "fallbacks": staged.fallbacks,
        **provenance,
    }
    schemas.validate_document("staging.part", part)
    key = layout.manifest_part_key(trust, body["batch_id"], chunk["index"], chunk["count"])
    put_json(store, bucket, key, part)


def part_keys(store: ObjectStore, bucket: str, trust: str, batch_id: str, count: int) -> list[str]:
    """The batch's part keys of a ``count``-chunk announcement, in index order."""
    keys = []
    for key in store.list_keys(bucket, layout.manifest_parts_prefix(trust, batch_id)):
        try:
            _index, of = layout.parse_manifest_part_key(key)
        except ValueError:
            continue
        if of == count:
            keys.append(key)
    return keys


def merge(
    store: ObjectStore, bucket: str, keys: list[str]
) -> tuple[Staged, dict[str, Any], list[str]]:
    """The parts merged in index order: (what the batch staged, the provenance of part 0, the
    staged objects now held back: to delete unless an earlier manifest lists them). Each
    chunk was checked against the study's earlier batches already."""
    merged = Staged()
    provenance: dict[str, Any] = {}
    for key in keys:
        part = get_json(store, bucket, key)
        try:
            schemas.validate_document("staging.part", part)
        except SchemaError as exc:
            raise PermanentError(f"manifest part invalid: {exc}") from None
        merged.study_uid = merged.study_uid or part["study_uid"]
        merged.instances += part["instances"]
        merged.sources += part["sources"]
        merged.held_back += part["held_back"]
        merged.fallbacks += part["fallbacks"]
        if not provenance:
            provenance = {k: part[k] for k in ("deidentification", "key_version", "code_version")}
    odd = _other_patients(merged.instances)
    delete = [s["key"] for s, o in zip(merged.instances, odd, strict=True) if o]
    if any(odd):
        kept = Staged(merged.study_uid, fallbacks=merged.fallbacks, held_back=merged.held_back)
        for entry, source, o in zip(merged.instances, merged.sources, odd, strict=True):
            if o:
                reason = Reason.PATIENT_IDENTITY_CONFLICT.value
                kept.held_back.append({"source": source, "reason": reason})
            else:
                kept.instances.append(entry)
                kept.sources.append(source)
        merged = kept
    return merged, provenance, delete


def _other_patients(instances: list[dict[str, Any]]) -> list[bool]:
    """Whether each staged instance disagrees on its patient pseudonym with the batch's
    majority (all of them, when no pseudonym has a majority)."""
    counts = Counter(i["patient"] for i in instances if i.get("patient"))
    odd = [False] * len(instances)
    if len(counts) > 1:
        top, n = counts.most_common(1)[0]
        majority = top if 2 * n > sum(counts.values()) else None
        odd = [bool(i.get("patient")) and i["patient"] != majority for i in instances]
    return odd


def delete_parts(store: ObjectStore, bucket: str, keys: list[str]) -> None:
    for key in keys:
        store.delete(bucket, key)
