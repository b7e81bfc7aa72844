"""Benchmark: smartbox de-identification vs dicognito and dcmanon on the same CT instances.

    .venv/bin/python bench/deid/bench_deid.py [--n 200] [--rounds 3] [--workers 1,2] \
        [--dicognito-python /tmp/bench-venv/bin/python] [--markdown] \
        [--pixels noise|ct12] [--baseline /tmp/head] \
        [--dcmanon-python /tmp/dcmanon-venv/bin/python] [--command]

Generates N ~0.5 MB CT instances (512x512x16 bit, ~100 attributes, private blocks, nested
sequences) once, then runs each tool ROUNDS times, alternating, one process per run, one
core each, file in -> file out (read + de-identify + write; ours includes both gates).
Prints files/s per run, the medians and the ratio; --markdown appends a table for
RESULTS.md.

--baseline DIR runs ours from another checkout (``git worktree add /tmp/head HEAD``) and
from this tree, alternating, and prints the change (nothing else is run). --pixels ct12 uses
12-bit CT values instead of 16-bit noise.

--dcmanon-python PY runs the engine loop and dcmanon (Rust; PyPI ``dcmanon`` in its own
venv: ``python3 -m venv /tmp/dcmanon-venv && /tmp/dcmanon-venv/bin/pip install dcmanon``)
alternating, and --command adds ``smartbox deidentify IN --out OUT`` (the real command, a
fresh process over the same files, and over one of them to take its start-up out): wall
rates and CPU ms per file, ratios to the engine with their range over the rounds, the
in-memory best-of-5 CPU per instance of the engine and dcmanon, and the load averages.

--workers 1,2 then runs ours in a process pool of each size (one ``Deidentifier`` per
worker process, files handed out in chunks of 8; the clock starts once every worker is up),
alternating the sizes ROUNDS times, to show how throughput scales with cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.trash import Trash  # noqa: E402

OURS = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey
deid = Deidentifier(PseudonymKey(b"bench-secret-0123456789", "k1"), DeidPolicy(trust_code="RTK"))
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(src.glob("*.dcm"))
t0, c0 = time.perf_counter(), time.process_time()
held = 0
for f in files:
    r = deid.process(f.read_bytes())
    if r.ok:
        (dst / f.name).write_bytes(r.data)
    else:
        held += 1
print(len(files) / (time.perf_counter() - t0), held, 1e3 * (time.process_time() - c0) / len(files))
"""

#: in memory, no file I/O: the best of PASSES passes over the corpus, CPU ms per instance
#: (the best pass is the one least disturbed by the neighbours on a shared machine)
BEST = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey
deid = Deidentifier(PseudonymKey(b"bench-secret-0123456789", "k1"), DeidPolicy(trust_code="RTK"))
data = [f.read_bytes() for f in sorted(Path(sys.argv[1]).glob("*.dcm"))]
held = sum(not deid.process(d).ok for d in data)  # warm-up pass
best = float("inf")
for _ in range(int(sys.argv[4])):
    c0 = time.process_time()
    for d in data:
        deid.process(d)
    best = min(best, time.process_time() - c0)
print(len(data) / best, held, 1e3 * best / len(data))
"""

POOL = """
import sys, time
from multiprocessing import Pool
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey
DST = Path(sys.argv[2])
deid = None

def init():
    global deid
    deid = Deidentifier(PseudonymKey(b"bench-secret-0123456789", "k1"),
                        DeidPolicy(trust_code="RTK"))

def ready(_):
    return deid is not None

def work(path):
    r = deid.process(path.read_bytes())
    if r.ok:
        (DST / path.name).write_bytes(r.data)
    return r.ok

if __name__ == "__main__":
    files = sorted(Path(sys.argv[1]).glob("*.dcm"))
    workers = int(sys.argv[4])
    with Pool(workers, initializer=init) as pool:
        assert all(pool.map(ready, range(workers * 4), chunksize=1))
        t0 = time.perf_counter()
        ok = pool.map(work, files, chunksize=8)
        rate = len(files) / (time.perf_counter() - t0)
    print(rate, len(files) - sum(ok))
"""

DICOGNITO = """
import sys, time
from pathlib import Path
import pydicom
from dicognito.anonymizer import Anonymizer
anon = Anonymizer()
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(src.glob("*.dcm"))
t0 = time.perf_counter()
for f in files:
    ds = pydicom.dcmread(f)
    anon.anonymize(ds)
    ds.save_as(dst / f.name)
print(len(files) / (time.perf_counter() - t0), 0)
"""

#: dcmanon (Rust, PyPI ``dcmanon``) in its own venv: its default profile, file in -> file out
#: (it reads the file itself: ``anonymize(path)``); no verification, no pixel gate, the file
#: meta copied unchanged. The same shape as ``OURS``: rate, held back, CPU ms per file.
DCMANON = """
import sys, time
from pathlib import Path
from dcmanon import Anonymizer
anon = Anonymizer()
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(src.glob("*.dcm"))
t0, c0 = time.perf_counter(), time.process_time()
for f in files:
    (dst / f.name).write_bytes(anon.anonymize(str(f)))
print(len(files) / (time.perf_counter() - t0), 0, 1e3 * (time.process_time() - c0) / len(files))
"""

#: dcmanon in memory, the best of PASSES passes (as ``BEST``): bytes in, bytes out
DCMANON_BEST = """
import io, sys, time
from pathlib import Path
from dcmanon import Anonymizer
anon = Anonymizer()
data = [f.read_bytes() for f in sorted(Path(sys.argv[1]).glob("*.dcm"))]
for d in data:  # warm-up pass
    anon.anonymize(io.BytesIO(d))
best = float("inf")
for _ in range(int(sys.argv[4])):
    c0 = time.process_time()
    for d in data:
        anon.anonymize(io.BytesIO(d))
    best = min(best, time.process_time() - c0)
print(len(data) / best, 0, 1e3 * best / len(data))
"""


def make_corpus(directory: Path, n: int, pixels_kind: str = "noise") -> None:
    """N instances. ``pixels_kind``: ``noise``, uniform random 16-bit values (every pixel has
    bits set outside Bits Stored 12, which the de-identifier must clear: the worst case), or
    ``ct12``, uniform random 12-bit values (what a CT writes)."""
    import random

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = random.Random(42)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    if pixels_kind == "ct12":
        pixels = b"".join(rng.getrandbits(12).to_bytes(2, "little") for _ in range(512 * 512))
    else:
        pixels = bytes(rng.getrandbits(8) for _ in range(512 * 512 * 2))
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240315"
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101500"
        ds.AccessionNumber, ds.Modality, ds.Manufacturer = "ACC123456", "CT", "ACME"
        ds.InstitutionName, ds.InstitutionAddress = "St Elsewhere Hospital", "1 High St, Leeds"
        ds.ReferringPhysicianName, ds.StationName = "Who^Doctor", "CT01"
        ds.StudyDescription, ds.SeriesDescription = "CT CHEST", "AXIAL 1.25"
        ds.OperatorsName, ds.PerformingPhysicianName = "Op^Erator", "Per^Former"
        ds.ManufacturerModelName = "Scanner 9000"
        ds.PatientName, ds.PatientID = "Smith^Jane", "4857773457"
        ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19610823", "F", "062Y"
        ds.OtherPatientIDs = "MRN0001"
        ds.BodyPartExamined, ds.SliceThickness, ds.KVP = "CHEST", "1.25", "120"
        ds.DeviceSerialNumber, ds.SoftwareVersions, ds.ProtocolName = "SN1", "V1", "Chest"
        ds.DataCollectionDiameter, ds.ReconstructionDiameter = "500", "350"
        ds.GantryDetectorTilt, ds.TableHeight, ds.RotationDirection = "0", "150", "CW"
        ds.ExposureTime, ds.XRayTubeCurrent, ds.Exposure = "500", "200", "100"
        ds.FilterType, ds.GeneratorPower, ds.FocalSpots = "BODY", "24", "1.2"
        ds.ConvolutionKernel, ds.PatientPosition = "B30f", "HFS"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyID, ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = "1", 2, 1, i + 1
        ds.ImagePositionPatient = [-175, -175, -i * 1.25]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.SliceLocation = -i * 1.25
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 512
        ds.PixelSpacing = [0.68, 0.68]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, generate_uid()
        ds.ReferencedImageSequence = Sequence([ref])
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D3000", "SRT", "Chest"
        ds.AnatomicRegionSequence = Sequence([code])
        proc = Dataset()
        proc.RequestedProcedureDescription = "CT CHEST"
        proc.RequestedProcedureID = "RP1"
        ds.RequestAttributesSequence = Sequence([proc])
        for group in (0x0009, 0x0019, 0x0043):
            block = ds.private_block(group, "GEMS_ACQU_01", create=True)
            for elem in range(0x10, 0x30):
                block.add_new(elem, "DS", str(elem))
        ds.PixelData = pixels
        ds.save_as(directory / f"ct{i:04d}.dcm", enforce_file_format=True)


#: earlier runs' outputs, deleted at the end (``bench/trash.py``: deleting them just before
#: the next run slowed that run's file creation on this machine's journal-less ext4)
TRASH = Trash(Path(tempfile.gettempdir()))


def _empty(dst: Path) -> None:
    """``dst``, empty, for the next run's outputs: the last run's moved aside, not deleted."""
    if any(dst.iterdir()):
        TRASH.add(dst)
        dst.mkdir()


def run(
    python: str, code: str, src: Path, dst: Path, *extra: str, root: Path = ROOT
) -> tuple[float, int]:
    """(files/s, instances held back) of one run; see ``run_cpu`` for its CPU time."""
    rate, held, _cpu = run_cpu(python, code, src, dst, *extra, root=root)
    return rate, held


def run_cpu(
    python: str, code: str, src: Path, dst: Path, *extra: str, root: Path = ROOT
) -> tuple[float, int, float]:
    """(files/s, held back, CPU ms per file of the process: NaN when the script does not
    say). CPU time is what to compare on a machine shared with other work: wall-clock
    rates move with the neighbours' load, the process's own CPU time much less."""
    _empty(dst)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [python, "-c", code, str(src), str(dst), str(root), *extra],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]), int(out[1]), float(out[2]) if len(out) > 2 else float("nan")


DEIDENTIFY = [sys.executable, "-m", "smartbox", "deidentify"]


def run_command(
    src: Path, dst: Path, n: int, root: Path = ROOT, workers: int = 0
) -> tuple[float, int, float]:
    """``smartbox deidentify SRC --out DST``, the real command, in a fresh process: (wall
    seconds of the process's whole life, start-up included; held back; CPU seconds, user +
    system of the process from ``wait4``). The key comes from the environment, as an
    operator's would; no trust: the deployment's default policy, the same options as
    ``OURS``. ``workers``: its ``--workers`` (0, its default: one per CPU for 200 files); CPU
    is the whole process tree's (``wait4`` counts the reaped workers)."""
    _empty(dst)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        SMARTBOX_PSEUDONYM_KEY="bench-secret-0123456789",
        PYTHONPATH=str(root),
    )
    env.pop("SMARTBOX_SECRETS_FILE", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*DEIDENTIFY, str(src), "--out", str(dst), "--workers", str(workers)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None  # noqa: S101 - PIPE above
    proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 3):
        raise SystemExit(f"smartbox deidentify exited {proc.returncode}")
    summary = json.loads((dst / "summary.json").read_text("utf-8"))
    if summary["files"] != n:
        raise SystemExit(f"smartbox deidentify saw {summary['files']} files, not {n}")
    return wall, int(summary["held_back"]), usage.ru_utime + usage.ru_stime


def compile_tree(root: Path) -> None:
    """Write the bytecode of `root`'s packages, which an installed package has: with
    ``PYTHONDONTWRITEBYTECODE`` set (as here) a checkout's sources would be compiled again at
    each command's start-up (~0.08 s a process on a 2-core VM)."""
    dirs = [d for d in ("producers", "consumers", "smartbox", "schemas") if (root / d).is_dir()]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *dirs],
        cwd=root,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def run_references(
    src: Path,
    dst: Path,
    n: int,
    rounds: int,
    dcmanon: str | None,
    command: bool,
    markdown: bool,
    command_workers: int = 0,
) -> None:
    """The engine loop (``OURS``), dcmanon and the ``smartbox deidentify`` command, one
    process each, alternating ROUNDS times: wall rates and CPU ms per file, medians, each
    ratio to the engine with its range over the rounds; then the in-memory best-of-5 CPU
    per instance of the engine and of dcmanon (the per-core comparison least moved by the
    neighbours' load). Load averages before and after, as the machine is shared.

    The command is a whole process: its start-up (Python, pydicom and numpy imports, the
    policy and the name vocabulary, ~0.5 s) is in its wall time but not in the engine
    loop's, which starts its clock after its own imports. So it is also run over one file
    of the corpus, and its per-file rate is reported both whole (N / wall) and marginal
    ((N - 1) / (wall(N) - wall(1)), CPU likewise): what each further file costs."""
    one = src.parent / "one"
    one.mkdir(exist_ok=True)
    first = sorted(src.glob("*.dcm"))[0]
    (one / first.name).write_bytes(first.read_bytes())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    names = ["engine"] + (["dcmanon"] if dcmanon else [])
    names += ["command (whole)", "command (marginal)"] if command else []
    rate: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names:
            if name == "engine":
                got = run_cpu(sys.executable, OURS, src, dst)
            elif name == "dcmanon":
                assert dcmanon is not None  # noqa: S101 - names has it only then
                got = run_cpu(dcmanon, DCMANON, src, dst)
            elif name == "command (whole)":
                wall_n, held, cpu_n = run_command(src, dst, n, workers=command_workers)
                wall_1, _, cpu_1 = run_command(one, dst, 1, workers=command_workers)
                got = (n / wall_n, held, 1e3 * cpu_n / n)
                rate["command (marginal)"].append((n - 1) / (wall_n - wall_1))
                cpu["command (marginal)"].append(1e3 * (cpu_n - cpu_1) / (n - 1))
                print(f"round {r + 1}: command over 1 file: {wall_1:.2f} s, {cpu_1:.2f} s CPU")
            else:
                got = (rate[name][-1], held, cpu[name][-1])
                rate[name].pop()
                cpu[name].pop()
            rate[name].append(got[0])
            cpu[name].append(got[2])
            print(
                f"round {r + 1}: {name:18s} {got[0]:7.1f} files/s {got[2]:6.2f} CPU ms/file "
                f"(held {got[1]})"
            )
    best: dict[str, list[float]] = {"engine": []}
    if dcmanon:
        best["dcmanon"] = []
        for _ in range(rounds):
            best["engine"].append(run_cpu(sys.executable, BEST, src, dst, "5")[2])
            best["dcmanon"].append(run_cpu(dcmanon, DCMANON_BEST, src, dst, "5")[2])
            print(
                f"in memory, best of 5 passes: engine {best['engine'][-1]:.3f}, dcmanon "
                f"{best['dcmanon'][-1]:.3f} CPU ms/instance"
            )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    engine, engine_cpu = rate["engine"], cpu["engine"]
    for name in names:
        med, cmed = statistics.median(rate[name]), statistics.median(cpu[name])
        ratios = [x / e for x, e in zip(rate[name], engine, strict=True)]
        cratios = [e / x for x, e in zip(cpu[name], engine_cpu, strict=True)]
        print(
            f"median: {name:18s} {med:7.1f} files/s (x{med / statistics.median(engine):.2f} "
            f"the engine, rounds {_spread(ratios)}), {cmed:.2f} CPU ms/file (speed by CPU "
            f"x{statistics.median(engine_cpu) / cmed:.2f} the engine, rounds {_spread(cratios)})"
        )
        if markdown:
            print(
                f"| {time.strftime('%Y-%m-%d')} | {name} | {med:.0f} | "
                f"{med / statistics.median(engine):.2f}x ({_spread(ratios)}) | {cmed:.2f} | "
                f"{statistics.median(engine_cpu) / cmed:.2f}x ({_spread(cratios)}) | "
                f"{', '.join(f'{x:.0f}' for x in rate[name])} |"
            )
    if dcmanon:
        be, bd = min(best["engine"]), min(best["dcmanon"])
        print(
            f"in memory, best CPU per instance: engine {be:.3f} ms, dcmanon {bd:.3f} ms: "
            f"engine at x{bd / be:.2f} dcmanon per core"
        )


def run_pool(src: Path, dst: Path, sizes: list[int], rounds: int, markdown: bool) -> None:
    """Ours in a process pool of each size, alternating with the plain one-process run (same
    time window, so the same machine noise); medians and speed-up over the smallest pool."""
    rates: dict[str, list[float]] = {"1 process, no pool": []}
    rates.update({f"pool of {n}": [] for n in sizes})
    for r in range(rounds):
        rate, held = run(sys.executable, OURS, src, dst)
        rates["1 process, no pool"].append(rate)
        print(f"round {r + 1}: smartbox, 1 process, no pool {rate:7.1f} files/s (held {held})")
        for n in sizes:
            rate, held = run(sys.executable, POOL, src, dst, str(n))
            rates[f"pool of {n}"].append(rate)
            print(f"round {r + 1}: smartbox, pool of {n} {rate:7.1f} files/s (held {held})")
    base = statistics.median(rates[f"pool of {sizes[0]}"])
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"median: {name} {med:.1f} files/s, x{med / base:.2f} vs pool of {sizes[0]}")
        if markdown:
            print(
                f"| {time.strftime('%Y-%m-%d')} | {name} | {med:.0f} | {med / base:.2f}x | "
                f"{', '.join(f'{x:.0f}' for x in values)} |"
            )


def run_baseline(src: Path, dst: Path, baseline: Path, rounds: int, markdown: bool) -> None:
    """Ours at `baseline` (e.g. ``git worktree add /tmp/head HEAD``) and ours here, one process
    each, alternating ROUNDS times: medians, the ratio and its range over the rounds."""
    base, here, cpu_base, cpu_here = [], [], [], []
    best_base: list[float] = []
    best_here: list[float] = []
    for r in range(rounds):
        rate, held_base, cpu = run_cpu(sys.executable, OURS, src, dst, root=baseline)
        base.append(rate)
        cpu_base.append(cpu)
        rate, held, cpu = run_cpu(sys.executable, OURS, src, dst)
        here.append(rate)
        cpu_here.append(cpu)
        print(
            f"round {r + 1}: baseline {base[-1]:7.1f} files/s {cpu_base[-1]:.2f} CPU ms/file "
            f"(held {held_base}), this tree {rate:7.1f} files/s {cpu:.2f} CPU ms/file "
            f"(held {held})"
        )
    for r in range(rounds):
        _, _, cpu = run_cpu(sys.executable, BEST, src, dst, "5", root=baseline)
        best_base.append(cpu)
        _, _, cpu = run_cpu(sys.executable, BEST, src, dst, "5")
        best_here.append(cpu)
        print(
            f"round {r + 1}: in memory, best of 5 passes: baseline {best_base[-1]:.3f}, "
            f"this tree {cpu:.3f} CPU ms/instance"
        )
    bb, bh = min(best_base), min(best_here)
    print(
        f"in memory, best CPU per instance: baseline {bb:.3f} ms, this tree {bh:.3f} ms: "
        f"speed {100 * (bb / bh - 1):+.1f} %"
    )
    cb, ch = statistics.median(cpu_base), statistics.median(cpu_here)
    cpu_ratios = [b / h for h, b in zip(cpu_here, cpu_base, strict=True)]
    print(
        f"median CPU per file: baseline {cb:.2f} ms, this tree {ch:.2f} ms: speed "
        f"{100 * (cb / ch - 1):+.1f} % (rounds {min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}x)"
    )
    mb, mh = statistics.median(base), statistics.median(here)
    ratios = [h / b for h, b in zip(here, base, strict=True)]
    print(
        f"median: baseline {mb:.1f}, this tree {mh:.1f} files/s, {100 * (mh / mb - 1):+.1f} % "
        f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    if markdown:
        print(
            f"| {time.strftime('%Y-%m-%d')} | {mb:.0f} | {mh:.0f} | {mh / mb:.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | {', '.join(f'{x:.0f}' for x in base)} / "
            f"{', '.join(f'{x:.0f}' for x in here)} |"
        )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dicognito-python", default="/tmp/bench-venv/bin/python")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--workers", default="", help="e.g. 1,2: also run ours in process pools")
    p.add_argument("--skip-dicognito", action="store_true", help="only the pool runs")
    p.add_argument(
        "--pixels",
        choices=["noise", "ct12"],
        default="noise",
        help="noise: random 16-bit (every pixel has overlay bits to clear); ct12",
    )
    p.add_argument("--baseline", type=Path, help="a checkout to compare with, alternating")
    p.add_argument(
        "--dcmanon-python",
        help="a venv's python with dcmanon installed: run the engine, dcmanon (and --command) "
        "alternating instead of the dicognito comparison",
    )
    p.add_argument(
        "--command",
        action="store_true",
        help="also run `smartbox deidentify FILES --out DIR` and compare it with the engine",
    )
    p.add_argument(
        "--command-workers",
        type=int,
        default=0,
        metavar="N",
        help="the command's --workers (default 0: its own default, one per CPU for 200 files)",
    )
    args = p.parse_args()
    for root in (ROOT, args.baseline):
        if root:  # every run imports bytecode, as an installed package does
            compile_tree(root)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "in"), Path(tmp, "out")
        src.mkdir()
        dst.mkdir()
        make_corpus(src, args.n, args.pixels)
        size = sum(f.stat().st_size for f in src.glob("*.dcm")) / args.n / 1e6
        if args.baseline:
            run_baseline(src, dst, args.baseline, args.rounds, args.markdown)
            return 0
        if args.dcmanon_python or args.command:
            run_references(
                src,
                dst,
                args.n,
                args.rounds,
                args.dcmanon_python,
                args.command,
                args.markdown,
                args.command_workers,
            )
            return 0
        if args.workers:
            sizes = [int(x) for x in args.workers.split(",")]
            run_pool(src, dst, sizes, args.rounds, args.markdown)
        if args.skip_dicognito:
            return 0
        ours, theirs = [], []
        for r in range(args.rounds):
            rate, held = run(sys.executable, OURS, src, dst)
            ours.append(rate)
            print(f"round {r + 1}: smartbox  {rate:7.1f} files/s (held back {held})")
            rate, _ = run(args.dicognito_python, DICOGNITO, src, dst)
            theirs.append(rate)
            print(f"round {r + 1}: dicognito {rate:7.1f} files/s")
        mo, mt = statistics.median(ours), statistics.median(theirs)
        print(
            f"median: smartbox {mo:.1f} files/s, dicognito {mt:.1f} files/s, "
            f"ratio {mo / mt:.2f}x  ({args.n} files of {size:.2f} MB, "
            f"{os.cpu_count()} cores, {platform.python_version()})"
        )
        if args.markdown:
            print(
                f"| {time.strftime('%Y-%m-%d')} | {args.n} x {size:.2f} MB CT | "
                f"{mo:.0f} | {mt:.0f} | {mo / mt:.2f}x | "
                f"{', '.join(f'{x:.0f}' for x in ours)} / "
                f"{', '.join(f'{x:.0f}' for x in theirs)} |"
            )
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    finally:
        TRASH.close()
