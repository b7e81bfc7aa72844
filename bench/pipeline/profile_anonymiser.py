"""Where the anonymiser's CPU goes per instance in the pipeline, against the engine alone.

    .venv/bin/python bench/pipeline/profile_anonymiser.py [--n 200] [--tree DIR] [--top 25]

Starts a fresh SeaweedFS (``weed mini``), puts N corpus instances (``bench_pipeline``'s
corpus, first study) and their batch manifest in quarantine as the receiver does, then runs
the tree's ``Anonymiser.handle`` on a study.arrived in this process, with the instance pool
replaced by a plain loop so that cProfile sees every call, against the real S3 store and an
in-process bus. Prints CPU ms per instance of ``handle`` (process time, without the profiler,
warm: a first batch is handled before the clock), of ``Deidentifier.process`` alone on the
same bytes, their ratio, and the top functions (CPU time) of a second, profiled batch.
``--tree`` profiles another checkout (the harness and weed are the same).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--tree", type=Path, default=HERE.parents[1])
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    tree = args.tree.resolve()
    if not (tree / "consumers" / "anonymiser.py").is_file():
        print(f"profile_anonymiser: {tree} is not a smartbox checkout", file=sys.stderr)
        return 2
    # the corpus and weed come from this tree's harness; smartbox from the tree under test
    sys.path.insert(0, str(HERE))
    from bench_pipeline import corpus  # noqa: PLC0415

    files = corpus(2000, 10)[0][: args.n]
    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    from helpers.services import start_s3_server  # noqa: PLC0415

    for name in [m for m in sys.modules if m.split(".")[0] in {"smartbox", "consumers", "schemas"}]:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    from helpers.quarantine import quarantine_batch  # noqa: PLC0415

    from consumers.anonymiser import Anonymiser  # noqa: PLC0415
    from consumers.deid import Deidentifier, DeidPolicy  # noqa: PLC0415
    from smartbox.bus import MemoryBus  # noqa: PLC0415
    from smartbox.keys import RegionalKey  # noqa: PLC0415
    from smartbox.s3 import S3Store  # noqa: PLC0415
    from smartbox.settings import S3Settings  # noqa: PLC0415
    from smartbox.trusts import TrustConfig

    work = Path(tempfile.mkdtemp(prefix="profile-anonymiser-"))
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    server = start_s3_server(weed, work / "weed")
    try:
        store = S3Store(S3Settings(server.endpoint, server.access_key, server.secret_key))
        key = RegionalKey(b"profile-" + b"k" * 32)
        trust = TrustConfig(
            code="PRF",
            name="profile",
            ae_title="PRF",
            port=0,
            allowed_callers=("*",),
            source_file=Path("profile"),
        )
        anonymiser = Anonymiser(store, MemoryBus(), key, {"PRF": trust}, workers=1)
        anonymiser._pool.map = map  # type: ignore[method-assign]  # one thread: cProfile sees all
        datas = [f.read_bytes() for f in files]
        anonymiser.handle(quarantine_batch(store, "PRF", datas[:10]))  # warm: buckets, caches
        timed, profiled = (quarantine_batch(store, "PRF", datas) for _ in range(2))
        t0 = time.process_time()
        anonymiser.handle(timed)
        handle_ms = (time.process_time() - t0) * 1000 / len(datas)
        profile = cProfile.Profile(time.process_time)  # CPU, not waiting on S3
        profile.enable()
        anonymiser.handle(profiled)
        profile.disable()
        engine = Deidentifier(key, DeidPolicy(trust_code="PRF"))
        engine.process(datas[0])
        t0 = time.process_time()
        for data in datas:
            engine.process(data)
        engine_ms = (time.process_time() - t0) * 1000 / len(datas)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"tree {tree}: {len(datas)} instances")
    print(f"anonymiser handle: {handle_ms:.2f} CPU ms/inst (this process; S3 server excluded)")
    print(f"engine alone:      {engine_ms:.2f} CPU ms/inst")
    print(f"ratio:             {handle_ms / engine_ms:.2f}")
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats("smartbox|consumers|minio/api|schemas", args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.print_callers("openssl_sha256|_hashlib.HASH|openssl_md5")
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
