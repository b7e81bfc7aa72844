"""``smartbox cohort status`` and ``report``: a cohort's progress and outcome, by pseudonym.

Status counts patients (pending, queried, failed) and studies by state. The report lists,
per patient pseudonym (the images' HMAC pseudonym of the NHS number or local ID), whether
studies were found, and per study pseudonym (the staged StudyInstanceUID) its retrieval state
and what the normal path did with it since: staged (study manifests in the staging bucket),
held back (instances the anonymiser held back, by manifest) and exported (the exporter's
record: sent or acknowledged nationally). Nothing else about the patient is printed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from producers.retrieve.api import open_state
from smartbox import layout
from smartbox.app.cohort_cli import cohort_or_fail, print_json
from smartbox.errors import NotFound, SmartboxError
from smartbox.settings import Settings
from smartbox.trusts import TrustConfig


def status_command(args: argparse.Namespace, settings: Settings, trust: TrustConfig) -> int:
    state = open_state(settings, trust)
    try:
        cohort = cohort_or_fail(state, args.cohort_id, trust)
        patients = state.patient_counts(args.cohort_id)
        studies = state.study_counts(args.cohort_id)
        reasons = state.reasons(args.cohort_id)
    finally:
        state.close()
    out = {
        "cohort_id": cohort["cohort_id"],
        "trust": cohort["trust"],
        "rows_accepted": cohort["accepted"],
        "rows_rejected": cohort["rejected"],
        "patients": patients,
        "studies": studies,
        "reasons": {f"{s}:{r}": n for (s, r), n in sorted(reasons.items())},
        "done": not patients.get("pending")
        and not studies.get("found")
        and not studies.get("retrieving"),
    }
    if args.json:
        print_json(out)
        return 0
    print(
        f"cohort {out['cohort_id']} ({out['trust']}): {out['rows_accepted']} rows accepted, "
        f"{out['rows_rejected']} rejected"
    )
    print("patients: " + _counts(patients))
    print("studies:  " + _counts(studies))
    for why, n in out["reasons"].items():
        print(f"  {why}: {n}")
    print("done" if out["done"] else "in progress")
    return 0


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def staged_outcome(store: Any, settings: Settings, trust: str, study_pseudonym: str) -> dict:
    """What the normal path did with a retrieved study: staged instances, held back,
    exported (per staged batch, from the exporter's records)."""
    from consumers.export_state import ExportState
    from smartbox.store import get_json

    staged = held = 0
    batches = exported = acked = 0
    export_state = ExportState(store, settings.staging_bucket)
    prefix = layout.staged_study_prefix(trust, study_pseudonym)
    for key in store.list_keys(settings.staging_bucket, prefix):
        if not layout.is_study_manifest_key(key):
            continue
        try:
            manifest = get_json(store, settings.staging_bucket, key)
        except NotFound:
            continue
        batches += 1
        staged += len(manifest.get("instances", []))
        held += len(manifest.get("held_back", []))
        record = export_state.get(trust, manifest["batch_id"])
        if record is not None and record["state"] in ("sent", "acked"):
            exported += 1
            acked += record["state"] == "acked"
    return {
        "batches_staged": batches,
        "instances_staged": staged,
        "instances_held_back": held,
        "batches_exported": exported,
        "batches_acknowledged": acked,
    }


def report_command(args: argparse.Namespace, settings: Settings, trust: TrustConfig) -> int:
    from smartbox.s3 import S3Store

    state = open_state(settings, trust)
    try:
        cohort = cohort_or_fail(state, args.cohort_id, trust)
        patients = state.patients_report(args.cohort_id)
        studies = state.studies_report(args.cohort_id)
    finally:
        state.close()
    store = S3Store(settings.s3)
    rows = []
    storage_ok = True
    for patient, study, st, reason in studies:
        item: dict[str, Any] = {"patient": patient, "study": study, "state": st}
        if reason:
            item["reason"] = reason
        if st in ("retrieved", "already_received") and storage_ok:
            try:
                item.update(staged_outcome(store, settings, trust.code, study))
            except SmartboxError as exc:  # storage unavailable: say so, report the rest
                print(f"smartbox: staging not readable: {exc}", file=sys.stderr)
                storage_ok = False
        rows.append(item)
    found = [p for p in patients if p[3] > 0]
    out = {
        "cohort_id": cohort["cohort_id"],
        "trust": cohort["trust"],
        "patients_found": [p[1] for p in found],
        "patients_not_found": [p[1] for p in patients if p[2] == "queried" and p[3] == 0],
        "patients_failed": [p[1] for p in patients if p[2] == "failed"],
        "patients_pending": [p[1] for p in patients if p[2] == "pending"],
        "studies": rows,
        "totals": _totals(rows),
    }
    if args.json:
        print_json(out)
        return 0 if storage_ok else 1
    print(f"cohort {out['cohort_id']} ({out['trust']})")
    for label in ("patients_found", "patients_not_found", "patients_failed", "patients_pending"):
        values = out[label]
        print(f"{label.replace('_', ' ')}: {len(values)}")
        for value in values:
            print(f"  {value}")
    print("studies (patient, study, state, staged, held back, exported):")
    for item in rows:
        print(
            f"  {item['patient']}  {item['study']}  {item['state']}"
            + (f" ({item['reason']})" if item.get("reason") else "")
            + (
                f"  staged {item['instances_staged']}  held {item['instances_held_back']}"
                f"  exported {item['batches_exported']}/{item['batches_staged']}"
                if "batches_staged" in item
                else ""
            )
        )
    print("totals: " + _counts(out["totals"]))
    return 0 if storage_ok else 1


def _totals(rows: list[dict]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for item in rows:
        totals[f"studies_{item['state']}"] = totals.get(f"studies_{item['state']}", 0) + 1
        for key in ("instances_staged", "instances_held_back", "batches_exported"):
            if key in item:
                totals[key] = totals.get(key, 0) + item[key]
        if item.get("batches_staged"):
            totals["studies_staged"] = totals.get("studies_staged", 0) + 1
        if item.get("batches_exported"):
            totals["studies_exported"] = totals.get("studies_exported", 0) + 1
    return totals
