"""Backlog benchmark: export cost per study and handling cost per message, at 0, 1,000 and
10,000 pending studies, on a real S3 server (SeaweedFS ``weed mini``, started here).

The backlog is another trust's pending studies (records and markers as ``handle`` writes
them). Each round stages 20 fresh studies for trust AAA, times ``Exporter.handle`` per message
(median), then one batch of those 20 (``export_pass(max_batches=1)``), per study. Ratios are
against 0 pending, with the spread across rounds. Run by hand:

    .venv/bin/python bench/export/bench_export.py --rounds 2 --backlogs 0,1000,10000 --markdown
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.export import stage_study  # noqa: E402
from helpers.services import start_s3_server  # noqa: E402

from consumers.export_policy import ExportPolicy  # noqa: E402
from consumers.export_state import ExportState  # noqa: E402
from consumers.exporter import Exporter  # noqa: E402
from smartbox import layout  # noqa: E402
from smartbox.bus import MemoryBus  # noqa: E402
from smartbox.s3 import S3Store  # noqa: E402
from smartbox.settings import S3Settings  # noqa: E402
from smartbox.signing import Signer  # noqa: E402

BATCH = 20


def fill_backlog(state: ExportState, n: int) -> None:
    """``n`` pending studies of trust ZZZ, written as ``handle`` writes them."""

    def one(i: int) -> None:
        export_id = uuid.uuid4().hex
        record = {
            "export_id": export_id,
            "trust": "ZZZ",
            "study_uid": f"2.25.{i + 1}",
            "study_key": export_id,
            "bucket": state.bucket,
            "manifest_key": layout.study_manifest_key("ZZZ", f"2.25.{i + 1}", export_id),
            "instances": 3,
            "bytes": 900,
            "amendment": False,
            "class": "prospective",
            "day": "2026-01-01",
            "recorded_at": time.time(),
            "state": "pending",
            "attempts": 0,
            "batch_id": None,
            "batches": [],
            "reasons": [],
            "patients": [],
            "message_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        }
        state.put(record)
        state.enqueue(record)
        state.mark_day(record)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    state.mark_trust("ZZZ")


def round_(store: S3Store, national: S3Store, backlog: int, seed: int) -> tuple[float, float]:
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    store.ensure_bucket(bucket)
    national.ensure_bucket(f"{bucket}-nat")
    fill_backlog(ExportState(store, bucket), backlog)
    exporter = Exporter(
        store,
        national,
        MemoryBus(validate_on_publish=False),
        signer=Signer.generate(),
        policy=ExportPolicy(window_end=None, max_batch_studies=BATCH),
        staging_bucket=bucket,
        national_bucket=f"{bucket}-nat",
    )
    messages = [
        stage_study(store, "AAA", seed * 1000 + i, bucket=bucket, instances=3, size=64 * 1024)
        for i in range(BATCH)
    ]
    handle_ms = []
    for m in messages:
        t = time.perf_counter()
        exporter.handle(m)
        handle_ms.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    summary = exporter.export_pass(max_batches=1)
    export_ms = (time.perf_counter() - t) * 1000 / BATCH
    assert summary.studies == {"AAA": BATCH}, summary
    return statistics.median(handle_ms), export_ms


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backlogs", default="0,1000,10000")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    backlogs = [int(x) for x in args.backlogs.split(",")]
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    servers = [
        start_s3_server(weed, tmp / name)
        for name in ("staging", "national")
        if (tmp / name).mkdir() is None
    ]  # noqa: E501
    try:
        stores = [S3Store(S3Settings(s.endpoint, s.access_key, s.secret_key)) for s in servers]
        results: dict[int, list[tuple[float, float]]] = {b: [] for b in backlogs}
        for r in range(args.rounds):
            for b in backlogs:  # alternate the backlogs within each round
                results[b].append(round_(stores[0], stores[1], b, r * 10 + backlogs.index(b)))
                h, e = results[b][-1]
                print(
                    f"round {r + 1} backlog {b}: handle {h:.1f} ms/msg, export {e:.1f} ms/study",
                    file=sys.stderr,
                )  # noqa: E501
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    base = results[backlogs[0]]
    print(
        "| pending studies | handle ms/message (median of rounds) | ratio vs 0 (range) "
        "| export ms/study | ratio vs 0 (range) |"
    )
    print("|---|---|---|---|---|")
    for b in backlogs:
        hs = [x[0] for x in results[b]]
        es = [x[1] for x in results[b]]
        hr = [h / base[i][0] for i, h in enumerate(hs)]
        er = [e / base[i][1] for i, e in enumerate(es)]
        print(
            f"| {b:,} | {statistics.median(hs):.1f} | {statistics.median(hr):.2f}× ({min(hr):.2f}–{max(hr):.2f}) "  # noqa: E501
            f"| {statistics.median(es):.1f} | {statistics.median(er):.2f}× ({min(er):.2f}–{max(er):.2f}) |"  # noqa: E501
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
