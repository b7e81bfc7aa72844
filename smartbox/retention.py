"""Retention that never loses and never hoards.

* **Quarantine** (identifiable originals): a quarantine batch is deleted only once its staged
  study version was **acknowledged by the national side** (or withdrawn, or had nothing to
  export because every instance was held back) **and** a grace period for reprocessing has
  passed since. A batch with no export record was never processed: it is never deleted, however
  old (an outage must not become data loss); past ``alert_seconds`` it is reported and counted
  (``smartbox_quarantine_unprocessed_old_batches``) so that someone looks. No lifecycle rule
  expires quarantine (``deploy/compose`` sets none).
* **Staging** (de-identified copies): an acknowledged study version's objects are deleted after
  the staging grace; its manifest and record stay for reconciliation and audit.

Every deletion is counted (``smartbox_retention_deleted_objects_total``) and logged with
pseudonymous keys only. The work list of the staging purge is the acknowledged markers (only
studies not purged yet), so its cost follows the acknowledgements, not the archive.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from . import layout, metrics
from .errors import NotFound
from .store import ObjectStore, get_json, put_json

log = logging.getLogger(__name__)
_DONE_AT = {"acked": "acked_at", "withdrawn": "withdrawn_at", "held": "recorded_at"}


@dataclass
class PurgeReport:
    purged_batches: int = 0
    purged_objects: int = 0
    kept_young: int = 0
    kept_unacknowledged: int = 0
    unprocessed_old: list[str] = field(default_factory=list)


def _record(store: ObjectStore, staging: str, trust: str, export_id: str) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = get_json(store, staging, layout.record_key(trust, export_id))
    except NotFound:
        return None
    return record


def purge_quarantine(
    store: ObjectStore,
    *,
    quarantine: str,
    staging: str,
    older_than_seconds: float,
    alert_seconds: float = 30 * 86400.0,
    dry_run: bool = False,
    now: float | None = None,
) -> PurgeReport:
    """Delete originals of acknowledged studies ``older_than_seconds`` (the grace) after."""
    now = time.time() if now is None else now
    report = PurgeReport()
    for key, _size, modified in list(store.list_entries(quarantine)):
        try:
            ref = layout.parse_quarantine_batch_key(key)
        except ValueError:
            continue
        record = _record(store, staging, ref.trust, ref.batch_id)
        if record is None:
            if now - modified >= alert_seconds:
                report.unprocessed_old.append(key)
            continue
        done_field = _DONE_AT.get(record["state"])
        if done_field is None or done_field not in record:
            report.kept_unacknowledged += 1
            continue
        if now - float(record[done_field]) < older_than_seconds:
            report.kept_young += 1
            continue
        manifest = get_json(store, quarantine, key)
        for entry in manifest.get("instances", []):
            if not dry_run:
                store.delete(quarantine, entry["key"])
            report.purged_objects += 1
        if not dry_run:
            store.delete(quarantine, key)
            metrics.RETENTION_DELETED.labels("quarantine", record["state"]).inc(
                len(manifest.get("instances", [])) + 1
            )
            log.info("quarantine: deleted batch %s (%s)", key, record["state"])
            # the exporter compacts a record once retention is done with it
            record["quarantine_purged_at"] = now
            put_json(store, staging, layout.record_key(ref.trust, ref.batch_id), record)
        report.purged_batches += 1
    metrics.QUARANTINE_UNPROCESSED_OLD.set(len(report.unprocessed_old))
    log.info(
        "quarantine purge%s: %d batches, %d objects; %d unprocessed batches past the alert age",
        " (dry run)" if dry_run else "",
        report.purged_batches,
        report.purged_objects,
        len(report.unprocessed_old),
    )
    return report


def unprocessed_batches(
    store: ObjectStore,
    *,
    quarantine: str,
    staging: str,
    alert_seconds: float,
    now: float | None = None,
) -> list[str]:
    """Quarantine batch manifests older than ``alert_seconds`` that no export record names
    (never processed: kept, never expired). One listing of the bucket (keys and dates only)
    and one HEAD per old manifest: cheap enough for a daemon to run hourly, and bounded by
    retention (acknowledged batches leave quarantine after their grace)."""
    now = time.time() if now is None else now
    old = []
    for key, _size, modified in store.list_entries(quarantine):
        if now - modified < alert_seconds:
            continue
        try:
            ref = layout.parse_quarantine_batch_key(key)
        except ValueError:
            continue
        if not store.exists(staging, layout.record_key(ref.trust, ref.batch_id)):
            old.append(key)
    return old


def purge_staging(
    store: ObjectStore, *, staging: str, grace_seconds: float, now: float | None = None
) -> int:
    """Delete the staged objects of studies acknowledged more than ``grace_seconds`` ago."""
    now = time.time() if now is None else now
    deleted = 0
    trusts = [k.rsplit("/", 1)[-1] for k in store.list_keys(staging, layout.trusts_prefix())]
    for trust in trusts:
        for marker in list(store.list_keys(staging, layout.acked_prefix(trust))):
            try:
                export_id = layout.marker_id(marker)
            except ValueError:
                continue
            record = _record(store, staging, trust, export_id)
            if record is None or record["state"] != "acked":
                store.delete(staging, marker)
                continue
            if now - float(record["acked_at"]) < grace_seconds:
                continue
            try:
                manifest = get_json(store, record["bucket"], record["manifest_key"])
            except NotFound:
                manifest = {"instances": []}
            for inst in manifest.get("instances", []):
                store.delete(record["bucket"], inst["key"])
                deleted += 1
            record["staging_purged_at"] = now
            put_json(store, staging, layout.record_key(trust, export_id), record)
            store.delete(staging, marker)
            metrics.RETENTION_DELETED.labels("staging", "acked").inc(len(manifest["instances"]))
            log.info(
                "staging: deleted %d objects of acknowledged %s",
                len(manifest["instances"]),
                record["manifest_key"],
            )  # noqa: E501
    return deleted
