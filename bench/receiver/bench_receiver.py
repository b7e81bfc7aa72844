"""Benchmark: C-STORE throughput of dcmtk storescp, Orthanc and smartbox's receiver.

    .venv/bin/python bench/receiver/bench_receiver.py [--n 2000] [--per-instance-n 300] \
        [--rounds 3] [--targets storescp,orthanc,smartbox] \
        [--patterns one,four,per_instance,per_file_storescu] \
        [--workers 2] [--markdown]

One corpus of N generated CT instances (512x512x16 bit, 0.53 MB, explicit VR little endian,
one study), sent to each receiver in these patterns: one association for everything (dcmtk
storescu), four parallel associations (four storescu processes, a quarter each), a new
association per instance (a pynetdicom sender: associate, one C-STORE, release; the first
``--per-instance-n`` files), and the same with one storescu process per file
(``per_file_storescu``: storescu proposes every storage SOP class, so this also prices the
negotiation of ~120 presentation contexts). TCP_NODELAY=1 is set for every dcmtk and Orthanc
process. Each run starts the receiver afresh with empty storage; the clock covers the sending
only (every response received). Receivers and patterns alternate within each round; the
medians of the rounds are reported, with ratios to Orthanc and storescp (and per round).
Every run checks that the receiver stored N. A run's files are deleted only when the pile
is large, followed by a pause, or at the end (``bench/trash.py``: on this machine's
journal-less ext4 a mass deletion slows file creation for the next 30 s), and all dirty pages
are written back (``sync``) before the next run starts. A run whose sender fails is run again
once, and says so. smartbox's relay uploads every durable instance to quarantine while the
study arrives; here that is a second durable copy on the same disk, which storescp and
Orthanc do not make, so those uploads wait until the run is over unless
``--smartbox-uploads`` is given (``bench_pipeline`` measures intake with real S3 uploads).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from bench.receiver.targets import AET, NODELAY, Orthanc, Smartbox, Storescp  # noqa: E402
from bench.trash import Trash  # noqa: E402

PER_INSTANCE_SENDER = """
import sys, time
from pathlib import Path
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage
_config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes; no decode/encode
port, files = int(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
ae = AE(ae_title="BENCH_SCU")
ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
t0 = time.perf_counter()
ok = 0
for f in files:
    assoc = ae.associate("127.0.0.1", port, ae_title="BENCH_SCP")
    if assoc.is_established:
        status = assoc.send_c_store(f)
        ok += int(bool(status) and status.Status == 0)
        assoc.release()
print(time.perf_counter() - t0, ok)
"""


def corpus(n: int) -> list[Path]:
    """N CT instances of 0.53 MB, generated once and cached."""
    directory = Path(tempfile.gettempdir()) / f"smartbox-bench-ct-{n}"
    files = sorted(directory.glob("*.dcm"))
    if len(files) == n:
        return files
    from smartbox.synthetic import make_ct_study

    shutil.rmtree(directory, ignore_errors=True)
    return make_ct_study(2026, series=1, per_series=n, rows=512, columns=512).write(directory)


def storescu(port: int, files: list[Path]) -> subprocess.Popen:
    cmd = ["/usr/bin/storescu", "-aet", "BENCH_SCU", "-aec", AET, "127.0.0.1", str(port)]
    return subprocess.Popen(
        cmd + [str(f) for f in files],
        env=NODELAY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def send(pattern: str, port: int, files: list[Path]) -> float:
    """Send ``files`` in ``pattern``; returns the seconds it took."""
    if pattern == "per_file_storescu":
        t0 = time.perf_counter()
        for f in files:
            proc = storescu(port, [f])
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"storescu failed: {err[-500:]}")
        return time.perf_counter() - t0
    if pattern == "per_instance":
        cmd = [sys.executable, "-c", PER_INSTANCE_SENDER, str(port), *map(str, files)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
        seconds, ok = out.stdout.split()
        if int(ok) != len(files):
            raise RuntimeError(f"{len(files) - int(ok)} instances not stored: {out.stderr[-500:]}")
        return float(seconds)
    groups = [files] if pattern == "one" else [files[i::4] for i in range(4)]
    t0 = time.perf_counter()
    procs = [storescu(port, g) for g in groups]
    for p in procs:
        _, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err[-500:]}")
    return time.perf_counter() - t0


def run_once(
    target_name: str,
    pattern: str,
    files: list[Path],
    work: Path,
    workers: int,
    trash: Trash,
    uploads: bool = False,
) -> float:
    workdir = Path(tempfile.mkdtemp(dir=work, prefix=f"{target_name}-{pattern}-"))
    shutil.rmtree(workdir)
    target = {
        "storescp": lambda: Storescp(workdir),
        "orthanc": lambda: Orthanc(workdir),
        "smartbox": lambda: Smartbox(workdir, workers, uploads),
    }[target_name]()
    try:
        target.start()
        time.sleep(1.0)  # let start-up work settle before the clock
        seconds = send(pattern, target.port, files)
        stored = target.stored()
        if stored != len(files):
            raise RuntimeError(f"{target.name} stored {stored} of {len(files)}")
        return len(files) / seconds
    finally:
        target.stop()
        trash.add(workdir)  # deleted later: see bench/trash.py
        # storescp does not fsync: its gigabyte of dirty pages would be written back during
        # the next run, whose fsyncs would wait behind it. Flushed here, off the clock.
        os.sync()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--per-instance-n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", default="storescp,orthanc,smartbox")
    ap.add_argument("--patterns", default="one,four,per_instance,per_file_storescu")
    ap.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--markdown", action="store_true", help="print a table for RESULTS.md")
    ap.add_argument(
        "--smartbox-uploads",
        action="store_true",
        help="let smartbox's relay upload to its (local) quarantine store during the run; by "
        "default the uploads wait until it is over, as the other receivers upload nothing",
    )
    args = ap.parse_args(argv)
    targets, patterns = args.targets.split(","), args.patterns.split(",")
    files = corpus(args.n)
    results: dict[tuple[str, str], list[float]] = {}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="smartbox-bench-") as tmp:
        trash = Trash(Path(tmp))
        common = (args.workers, trash, args.smartbox_uploads)
        try:
            for r in range(args.rounds):
                for pattern in patterns:
                    per_instance = pattern.startswith("per_")
                    subset = files[: args.per_instance_n] if per_instance else files
                    order = targets[r % len(targets) :] + targets[: r % len(targets)]
                    for name in order:
                        try:
                            rate = run_once(name, pattern, subset, Path(tmp), *common)
                        except RuntimeError as exc:  # a sender failing once: say so, run again
                            print(f"round {r + 1} {pattern} {name}: {exc}; again", flush=True)
                            rate = run_once(name, pattern, subset, Path(tmp), *common)
                        results.setdefault((name, pattern), []).append(rate)
                        line = f"round {r + 1} {pattern:12s} {name:9s} {rate:7.1f} inst/s"
                        print(line, flush=True)
        finally:
            trash.close()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    medians = {k: statistics.median(v) for k, v in results.items()}
    print()
    print(f"{os.cpu_count()} CPUs, {platform.platform()}, smartbox workers={args.workers}")
    refs = [t for t in ("orthanc", "storescp") if t in targets and "smartbox" in targets]
    header = (
        "| sender pattern | "
        + " | ".join(targets)
        + "".join(f" | smartbox / {t} (rounds)" for t in refs)
    )
    rows = [header + " |", "|---" * (len(targets) + 1 + len(refs)) + "|"]
    for pattern in patterns:
        cells = [f"{medians[(t, pattern)]:.0f}" for t in targets]
        for ref in refs:
            ours, theirs = results[("smartbox", pattern)], results[(ref, pattern)]
            per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs, strict=True))
            ratio = medians[("smartbox", pattern)] / medians[(ref, pattern)]
            cells.append(f"{ratio:.2f}x ({per_round})")
        rows.append(f"| {pattern} | " + " | ".join(cells) + " |")
    print("\n".join(rows))
    if args.markdown:
        print()
        for (name, pattern), v in sorted(results.items()):
            print(f"- {name} {pattern}: " + ", ".join(f"{x:.0f}" for x in v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
