import os
import time
from pathlib import Path

from smartbox.retention import purge_quarantine
from smartbox.store import LocalStore, put_json

DAY = 86400.0


def make_batch(store: LocalStore, root: Path, batch: str, age_days: float, processed: bool) -> list:
    keys = [f"RTK/{batch * 4}/{i:032x}-0000000000000000.dcm" for i in range(3)]
    for k in keys:
        store.put_bytes("quarantine", k, b"DICM")
    manifest = f"RTK/{batch * 4}/batches/{batch * 32}.json"
    put_json(store, "quarantine", manifest, {"instances": [{"key": k} for k in keys]})
    then = time.time() - age_days * DAY
    for k in [*keys, manifest]:
        os.utime(root / "quarantine" / k, (then, then))
    if processed:
        put_json(store, "staging", f"_export/done/{'f' * 32}/RTK/{batch * 32}.json", {})
    return [*keys, manifest]


def test_purges_only_processed_batches_past_retention(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.ensure_bucket("quarantine")
    store.ensure_bucket("staging")
    old_done = make_batch(store, tmp_path, "a", 40, processed=True)
    young_done = make_batch(store, tmp_path, "b", 5, processed=True)
    old_unprocessed = make_batch(store, tmp_path, "c", 90, processed=False)

    dry = purge_quarantine(
        store, quarantine="quarantine", staging="staging", older_than_seconds=30 * DAY, dry_run=True
    )
    assert (dry.purged_batches, dry.purged_objects) == (1, 3)
    assert all(store.exists("quarantine", k) for k in old_done)

    report = purge_quarantine(
        store, quarantine="quarantine", staging="staging", older_than_seconds=30 * DAY
    )
    assert (report.purged_batches, report.purged_objects, report.kept_young) == (1, 3, 1)
    assert report.unprocessed_old == [old_unprocessed[-1]]
    assert not any(store.exists("quarantine", k) for k in old_done)
    assert all(store.exists("quarantine", k) for k in young_done + old_unprocessed)
