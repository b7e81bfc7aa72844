"""National side of a key rotation: apply a signed rotation map, and link pseudonyms across it.

A rotation map (``rotation.map`` v1, made by ``smartbox rotate-key``) arrives in an export
batch, listed with its sha256 in the Ed25519-signed national batch manifest: its bytes are
checked against that digest, then every pair becomes a link in the archive
(``_ingest/links/<patient|study>/<old>.json`` -> the new pseudonym, the key versions, and for
a patient the change of date shift). Nothing archived is rewritten: a study exported under the
old key keeps its files; readers resolve an old pseudonym to the current one through the
links (a chain, after several rotations), which is how a patient's studies from before and
after a rotation come together. Each link is also written backwards
(``_ingest/links/<kind>-from/<new>/<old>``, an empty marker), so ``family`` finds from the
current pseudonym every older one. Applying a map twice writes the same links.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import schemas
from smartbox import layout
from smartbox.errors import NotFound, SchemaError
from smartbox.store import ObjectStore, get_json, put_json
from smartbox.transfer import BadObject, read_verified

#: a longer chain than this is a loop or a forgery, not a history of rotations
MAX_HOPS = 64


def apply(store: ObjectStore, bucket: str, archive: str, item: dict[str, Any]) -> dict[str, Any]:
    """Verify one listed rotation map and write its links; its receipt entry."""
    rotation_id = item["rotation_id"]
    try:
        raw = read_verified(store, bucket, item["key"], item["sha256"])
    except BadObject as exc:
        return {"rotation_id": rotation_id, "status": "rejected", "reason": exc.reason}
    try:
        doc = json.loads(raw)
        schemas.validate_document("rotation.map", doc)
    except (ValueError, SchemaError):
        return {"rotation_id": rotation_id, "status": "rejected", "reason": "manifest_invalid"}
    if doc["rotation_id"] != rotation_id:
        return {"rotation_id": rotation_id, "status": "rejected", "reason": "manifest_invalid"}
    for kind, pairs in (("patient", doc["patients"]), ("study", doc["studies"])):
        for pair in pairs:
            link = {
                "to": pair["to"],
                "from_version": pair["from_version"],
                "to_version": doc["to_version"],
                "rotation_id": rotation_id,
            }
            if kind == "patient":
                link["date_shift_delta_days"] = pair["date_shift_delta_days"]
            put_json(store, archive, layout.national_link_key(kind, pair["from"]), link)
            store.put_bytes(
                archive, layout.national_link_reverse_key(kind, pair["to"], pair["from"]), b""
            )
    put_json(store, archive, layout.national_rotation_key(doc["trust"], rotation_id), doc)
    return {"rotation_id": rotation_id, "status": "applied"}


def resolve(store: ObjectStore, archive: str, kind: str, value: str) -> tuple[str, int]:
    """The current pseudonym (``patient``) or pseudo study UID (``study``) for ``value``, and
    for a patient the days to add to dates shifted under ``value``'s key to put them on the
    current key's timeline."""
    delta = 0
    for _hop in range(MAX_HOPS):
        try:
            link = get_json(store, archive, layout.national_link_key(kind, value))
        except NotFound:
            return value, delta
        value = link["to"]
        delta += int(link.get("date_shift_delta_days", 0))
    raise ValueError(f"{kind} links: a chain longer than {MAX_HOPS} (a loop?)")


def family(store: ObjectStore, archive: str, kind: str, value: str) -> list[str]:
    """Every pseudonym linked to ``value`` across rotations: the current one first, then
    every earlier one it replaced (directly or down a chain, through the reverse markers),
    then any on ``value``'s own way forwards that no marker names (links applied before the
    markers existed)."""
    chain = [value]  # value -> ... -> current
    while True:
        try:
            link = get_json(store, archive, layout.national_link_key(kind, chain[-1]))
        except NotFound:
            break
        if link["to"] in chain or len(chain) > MAX_HOPS:
            raise ValueError(f"{kind} links: a loop or a chain longer than {MAX_HOPS}")
        chain.append(link["to"])
    out, frontier = [chain[-1]], [chain[-1]]
    seen = set(out)
    while frontier:
        if len(out) > MAX_HOPS * MAX_HOPS:
            raise ValueError(f"{kind} links: too many earlier pseudonyms (a loop?)")
        earlier = []
        for name in frontier:
            prefix = layout.national_link_reverse_prefix(kind, name)
            for key in store.list_keys(archive, prefix):
                old = key[len(prefix) :]
                if old not in seen:
                    seen.add(old)
                    earlier.append(old)
        out += sorted(earlier)
        frontier = sorted(earlier)
    return out + [name for name in reversed(chain) if name not in seen]


def studies_by_patient(store: ObjectStore, archive: str) -> dict[str, set[str]]:
    """Every archived study, by the current pseudonym of its patient (pseudo study UIDs
    resolved too): one patient's history, whichever key each study was exported under."""
    out: dict[str, set[str]] = defaultdict(set)
    for key in store.list_keys(archive):
        if not layout.is_study_manifest_key(key):
            continue
        manifest = get_json(store, archive, key)
        study, _ = resolve(store, archive, "study", manifest["study_uid"])
        for inst in manifest.get("instances", []):
            if inst.get("patient"):
                out[resolve(store, archive, "patient", inst["patient"])[0]].add(study)
    return dict(out)
