"""Quarantine retention: identifiable originals are deleted once processed and old enough.

A batch in ``quarantine`` (its manifest ``<trust>/<study_key>/batches/<batch_id>.json`` and the
instances it lists) may be purged when both hold:

* the anonymiser has processed it: the exporter holds a pending or done record for the batch
  id in ``staging/_export/`` (so it was staged, with any held-back instances recorded);
* its manifest is older than the retention period.

A batch that was never processed is never purged, however old: an anonymiser outage must not
turn into data loss. Such batches are reported so that someone looks at them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from .store import ObjectStore, get_json

log = logging.getLogger(__name__)


@dataclass
class PurgeReport:
    purged_batches: int = 0
    purged_objects: int = 0
    kept_young: int = 0
    unprocessed_old: list[str] = field(default_factory=list)


def processed_batches(store: ObjectStore, staging: str) -> set[str]:
    ids = set()
    for key in store.list_keys(staging, "_export/"):
        if key.endswith(".json") and ("/pending/" in f"/{key}" or "/done/" in f"/{key}"):
            ids.add(key.rsplit("/", 1)[-1].removesuffix(".json"))
    return ids


def purge_quarantine(
    store: ObjectStore,
    *,
    quarantine: str,
    staging: str,
    older_than_seconds: float,
    dry_run: bool = False,
    now: float | None = None,
) -> PurgeReport:
    now = time.time() if now is None else now
    done = processed_batches(store, staging)
    report = PurgeReport()
    for key, _size, modified in store.list_entries(quarantine):
        if "/batches/" not in key or not key.endswith(".json"):
            continue
        batch_id = key.rsplit("/", 1)[-1].removesuffix(".json")
        old = now - modified >= older_than_seconds
        if batch_id not in done:
            if old:
                report.unprocessed_old.append(key)
            continue
        if not old:
            report.kept_young += 1
            continue
        manifest = get_json(store, quarantine, key)
        for entry in manifest.get("instances", []):
            if not dry_run:
                store.delete(quarantine, entry["key"])
            report.purged_objects += 1
        if not dry_run:
            store.delete(quarantine, key)
        report.purged_batches += 1
    log.info(
        "quarantine purge%s: %d batches, %d objects; %d unprocessed batches past retention",
        " (dry run)" if dry_run else "",
        report.purged_batches,
        report.purged_objects,
        len(report.unprocessed_old),
    )
    return report
