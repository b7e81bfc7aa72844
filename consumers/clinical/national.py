"""National side: archive a batch's clinical records and link them to the patient's studies.

The national batch manifest (v2) lists each clinical record with its sha256; its signature
was checked before this runs. Each record is read and checked against that digest and its
schema (``clinical.record`` v1, the listed record id and patient), archived under its key,
and linked: ``_ingest/patients/<pseudonym>/clinical/<record_id>.json`` names the latest
version of the record (by ``recorded_at``), beside ``_ingest/patients/<pseudonym>/study/<uid>``
markers the ingest writes for every archived study. ``patient_links`` reads both: what the
national database holds for one patient, images and clinical data together, under every
pseudonym a key rotation linked (looked up by the old one or the new one alike).
"""

from __future__ import annotations

import json
from typing import Any

import schemas
from consumers import national_links
from smartbox import layout
from smartbox.errors import NotFound, SchemaError
from smartbox.store import ObjectStore, get_json, put_json
from smartbox.transfer import BadObject, read_verified


def ingest(
    store: ObjectStore, bucket: str, archive: str, item: dict[str, Any], *, keep: bool = True
) -> dict[str, Any]:
    """Verify one listed record; archive and link it unless ``keep`` is false (a probe
    batch); its receipt entry."""
    export_id = item["export_id"]
    try:
        raw = read_verified(store, bucket, item["key"], item["sha256"])
    except BadObject as exc:
        return {"export_id": export_id, "status": "rejected", "reason": exc.reason}
    if len(raw) != item["size"]:
        return {"export_id": export_id, "status": "rejected", "reason": "size_mismatch"}
    try:
        record = json.loads(raw)
        schemas.validate_document("clinical.record", record)
    except (ValueError, SchemaError):
        return {"export_id": export_id, "status": "rejected", "reason": "manifest_invalid"}
    if record["record_id"] != item["record_id"] or record["patient"] != item["patient"]:
        return {"export_id": export_id, "status": "rejected", "reason": "manifest_invalid"}
    if keep:
        store.put_bytes(archive, item["key"], raw)
        link_key = layout.national_patient_clinical_key(record["patient"], record["record_id"])
        try:
            current = get_json(store, archive, link_key)
        except NotFound:
            current = None
        if current is None or float(current["recorded_at"]) <= float(item["recorded_at"]):
            put_json(
                store,
                archive,
                link_key,
                {
                    "key": item["key"],
                    "sha256": item["sha256"],
                    "recorded_at": item["recorded_at"],
                    "export_id": export_id,
                    "trust": record["trust"],
                },
            )
    return {"export_id": export_id, "status": "accepted"}


def withdraw(store: ObjectStore, archive: str, item: dict[str, Any]) -> dict[str, Any]:
    """Delete a withdrawn patient's archived record version and its link; its receipt entry
    (``applied`` also when nothing was archived: the result is the same)."""
    store.delete(archive, item["key"])
    link_key = layout.national_patient_clinical_key(item["patient"], item["record_id"])
    try:
        link = get_json(store, archive, link_key)
    except NotFound:
        link = None
    if link is not None:
        store.delete(archive, link["key"])  # the latest version, if another one
        store.delete(archive, link_key)
    return {"export_id": item["export_id"], "status": "applied"}


def link_study(store: ObjectStore, archive: str, manifest: dict[str, Any]) -> None:
    """Markers: each patient of an archived study manifest has that study."""
    for patient in sorted(
        {i["patient"] for i in manifest.get("instances", []) if i.get("patient")}
    ):
        store.put_bytes(
            archive, layout.national_patient_study_key(patient, manifest["study_uid"]), b""
        )


def unlink_study(store: ObjectStore, archive: str, manifest: dict[str, Any]) -> None:
    """A withdrawn study's markers go with it."""
    for patient in sorted(
        {i["patient"] for i in manifest.get("instances", []) if i.get("patient")}
    ):
        store.delete(archive, layout.national_patient_study_key(patient, manifest["study_uid"]))


def patient_links(store: ObjectStore, archive: str, patient: str) -> dict[str, Any]:
    """What the archive holds for one patient, looked up by any of their pseudonyms: key
    rotations link an old pseudonym to its new one (``consumers.national_links``), and this
    follows them both ways, so the old and the new pseudonym give the same answer.

    ``studies`` (archived study UIDs, as exported) and ``clinical`` (record id -> the archived
    record, latest version; each record names its own ``patient``) of every linked pseudonym;
    ``patient``: the current pseudonym; ``pseudonyms``: it and every earlier one;
    ``by_pseudonym``: pseudonym -> the study UIDs and record ids archived under it."""
    names = national_links.family(store, archive, "patient", patient)
    studies: set[str] = set()
    clinical: dict[str, dict[str, Any]] = {}
    by_pseudonym: dict[str, dict[str, list[str]]] = {}
    for name in names:
        held_studies, held_records = _held(store, archive, name)
        studies |= held_studies
        clinical.update(held_records)
        by_pseudonym[name] = {"studies": sorted(held_studies), "clinical": sorted(held_records)}
    return {
        "patient": names[0],
        "pseudonyms": names,
        "studies": sorted(studies),
        "clinical": clinical,
        "by_pseudonym": by_pseudonym,
    }


def _held(
    store: ObjectStore, archive: str, patient: str
) -> tuple[set[str], dict[str, dict[str, Any]]]:
    """The study UIDs and clinical records archived under exactly this pseudonym."""
    studies: set[str] = set()
    clinical: dict[str, dict[str, Any]] = {}
    prefix = layout.national_patient_prefix(patient)
    for key in store.list_keys(archive, prefix):
        kind, _, name = key[len(prefix) :].partition("/")
        if kind == "study":
            studies.add(name)
        elif kind == "clinical" and name.endswith(".json"):
            link = get_json(store, archive, key)
            clinical[name.removesuffix(".json")] = get_json(store, archive, link["key"])
    return studies, clinical
