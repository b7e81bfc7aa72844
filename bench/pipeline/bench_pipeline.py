"""Benchmark: the whole pipeline, receive -> staged, against its two floors.

    .venv/bin/python bench/pipeline/bench_pipeline.py [--n 2000] [--studies 10] [--rounds 3] \
        [--anonymisers 2] [--associations 2] [--quiet 1.0] [--latency 100,500,2000] \
        [--latency-rounds 2] [--tree DIR] [--baseline DIR] [--markdown]

Real RabbitMQ (``--amqp``, 127.0.0.1:5672) and a fresh SeaweedFS ``weed mini`` per run (free
ports, as ``tests/conftest.py`` starts it). The corpus is N synthetic 0.53 MB CT instances
(``smartbox.synthetic``) in ``--studies`` studies, sent by ``--associations`` dcmtk storescu
processes in parallel (TCP_NODELAY=1), studies dealt out round-robin. Three runs per round,
in an order that rotates from round to round:

* ``pipeline``: one receiver and ``--anonymisers`` anonymiser processes; the clock runs from
  the first C-STORE to the last ``study.staged`` confirmed (drained from the exporter queue:
  no exporter runs), so it includes one quiet period.
* ``receive``: the same receiver, no consumers; the clock covers the sending (every C-STORE
  answered). ``announced`` is the time until every instance was in a ``study.arrived``; the
  CPU is counted up to then (the relay's uploads included).
* ``floor``: the S3 work per instance and nothing else: PUT to quarantine, GET, PUT to
  staging, by a minimal loop over the ``minio`` client in ``--anonymisers`` processes of 4
  threads each (the anonymiser's instance parallelism), no DICOM work.

S3 requests per instance are read from weed's own metrics (``-metricsPort``) over the same
window, by bucket role, request type and status.

CPU ms per instance is per process (utime + stime from /proc, children included: the
receiver's SCP workers) over the timed window, weed included, divided by N (so each
anonymiser's figure is its share; ``anonymisers`` is their sum). ``engine alone`` is the
tree's ``Deidentifier.process`` on 200 of the same instances in memory (process time, one
thread), run right after each pipeline run: the anonymisers' CPU is compared with it. Ratios
are taken within a round (pipeline / floor, pipeline / receive) and reported as median and
min-max over rounds.

Completion latency: for each size in ``--latency``, one study of that many instances is sent
to a receiver alone (quiet period ``--quiet``); the time from the last C-STORE answered to
the last ``study.arrived`` confirmed, minus the quiet period, is "beyond quiet" (the relay
polls every 0.5 s, so that is its resolution).

``--tree DIR`` runs the smartbox processes from another checkout (``git worktree add
/tmp/base c45beb2``): the harness, RabbitMQ and weed are the same, only the code under test
differs. ``--baseline DIR`` runs that checkout too, alternating with ``--tree`` in every round
(the order flips each round), and adds the ratio of their pipeline rates. The machine's load
average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pika  # noqa: E402
from helpers.pipeline import Pipeline  # noqa: E402
from helpers.services import S3Server, start_s3_server  # noqa: E402

from bench.trash import Trash  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")

FLOOR = """
import io, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from minio import Minio
endpoint, access, secret, quarantine, staging = sys.argv[1:6]
files = [Path(p) for p in sys.argv[6:]]
client = Minio(endpoint, access_key=access, secret_key=secret, secure=False)
def one(path):
    data = path.read_bytes()
    client.put_object(quarantine, path.name, io.BytesIO(data), len(data))
    r = client.get_object(quarantine, path.name)
    try:
        body = r.read()
    finally:
        r.close(); r.release_conn()
    client.put_object(staging, path.name, io.BytesIO(body), len(body))
print("ready", flush=True)
sys.stdin.readline()
with ThreadPoolExecutor(4) as pool:
    list(pool.map(one, files))
print("done", flush=True)
"""


# --- processes and their CPU -----------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime + stime ticks) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree_ticks(pid: int) -> int:
    """CPU ticks of ``pid`` and its live descendants."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            s = _stat(int(entry))
            if s:
                stats[int(entry)] = s
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += stats[p][1]
            todo.extend(c for c, (pp, _t) in stats.items() if pp == p)
    return total


class CpuMeter:
    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: tree_ticks(pid) for name, pid in pids.items()}

    def ms(self) -> dict[str, float]:
        return {
            name: (tree_ticks(pid) - self.start[name]) * 1000.0 / CLK_TCK
            for name, pid in self.pids.items()
        }


class S3Requests:
    """S3 requests the server answered over a window, from weed's own Prometheus counter
    (``SeaweedFS_s3_request_total``, by bucket, type and status): what each mode asks of the
    store per instance, read on the server side so no client is instrumented. weed's types are
    coarse (a HEAD counts as GET, bucket calls as PUT/LIST); the status tells misses apart."""

    def __init__(self, server: S3Server, buckets: dict[str, str]) -> None:
        self.url = f"http://{server.metrics}/metrics"
        self.roles = {name: role for role, name in buckets.items()}
        self.start = self.read()

    def read(self) -> dict[str, float]:
        import urllib.request

        counts: dict[str, float] = {}
        with urllib.request.urlopen(self.url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if not line.startswith("SeaweedFS_s3_request_total{"):
                    continue
                labels_text, value = line[len("SeaweedFS_s3_request_total{") :].rsplit("} ", 1)
                labels = dict(part.split("=", 1) for part in labels_text.split(",") if "=" in part)
                labels = {k: v.strip('"') for k, v in labels.items()}
                bucket = self.roles.get(labels.get("bucket", ""), labels.get("bucket") or "-")
                code = labels.get("code", "")
                name = f"{bucket} {labels.get('type', '?')}" + ("" if code == "200" else f" {code}")
                counts[name] = counts.get(name, 0.0) + float(value)
        return counts

    def per_instance(self, n: int) -> dict[str, float]:
        end = self.read()
        out = {k: (v - self.start.get(k, 0.0)) / n for k, v in sorted(end.items())}
        return {k: round(v, 3) for k, v in out.items() if v}


# --- corpus ----------------------------------------------------------------------------------
def corpus(n: int, studies: int) -> list[list[Path]]:
    """N instances of 0.53 MB in ``studies`` studies, generated once and cached in /tmp."""
    from smartbox.synthetic import make_ct_study

    base = Path(tempfile.gettempdir()) / f"smartbox-bench-pipeline-{n}x{studies}"
    per = [n // studies + (1 if i < n % studies else 0) for i in range(studies)]
    out = []
    for i, k in enumerate(per):
        directory = base / f"study{i:03d}"
        files = sorted(directory.glob("*.dcm"))
        if len(files) != k:
            shutil.rmtree(directory, ignore_errors=True)
            files = make_ct_study(7000 + i, series=1, per_series=k, rows=512, columns=512).write(
                directory
            )
        out.append(sorted(files))
    return out


def storescu(port: int, code: str, files: list[Path]) -> subprocess.Popen[str]:
    cmd = ["/usr/bin/storescu", "-aet", f"{code}_PACS", "-aec", f"SMARTBOX_{code}"]
    return subprocess.Popen(
        [*cmd, "127.0.0.1", str(port), *map(str, files)],
        env=dict(os.environ, TCP_NODELAY="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def send(port: int, code: str, studies: list[list[Path]], associations: int) -> None:
    groups = [[f for s in studies[i::associations] for f in s] for i in range(associations)]
    procs = [storescu(port, code, g) for g in groups if g]
    for p in procs:
        _, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err[-400:]}")


# --- one environment per run -----------------------------------------------------------------
#: where finished runs' directories wait to be deleted (``bench/trash.py``)
TRASH = Trash(Path(tempfile.gettempdir()))


class Run:
    """A fresh weed, namespace, spool and buckets; smartbox processes from ``tree``."""

    def __init__(self, args: argparse.Namespace, tree: Path) -> None:
        self.args = args
        self.tree = tree
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        self.s3: S3Server = start_s3_server(weed, self.dir / "weed")
        self.ns = f"b{uuid.uuid4().hex[:10]}"
        self.p = Pipeline(self.dir / "p", args.amqp, self.ns, self.s3)
        self.p.extra_env = {"SMARTBOX_LOG_LEVEL": "WARNING"}
        self.code = "BNC"
        self.port = self.p.add_trust(self.code, quiet_seconds=args.quiet, extra=args.trust_extra)
        from smartbox.rabbit import RabbitBus
        from smartbox.topology import Topology

        RabbitBus(args.amqp, Topology(self.ns)).declare()

    def start(self, name: str, *argv: str) -> int:
        cwd = os.getcwd()
        os.chdir(self.tree)  # python -m smartbox imports the tree under test
        try:
            return self.p.start(name, *argv).popen.pid
        finally:
            os.chdir(cwd)

    def drain(self, role: str) -> list[dict]:
        return self.p.queue_messages(role)

    def close(self) -> None:
        self.p.stop_all()
        conn = pika.BlockingConnection(pika.URLParameters(self.args.amqp))
        from smartbox.topology import Topology

        Topology(self.ns).delete(conn.channel())
        conn.close()
        self.s3.stop()
        TRASH.add(self.dir)  # deleted later: see bench/trash.py
        os.sync()  # nothing of this run is written back during the next one


def wait_count(run: Run, role: str, field: str, n: int, timeout: float) -> float:
    """Drain ``role``'s queue until the bodies' ``field`` add up to n (each message once);
    returns the monotonic time it was reached."""
    seen: set[str] = set()
    total = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in run.drain(role):
            if m["message_id"] not in seen:
                seen.add(m["message_id"])
                chunk = m["body"].get("chunk") if field == "instance_count" else None
                total += chunk["stop"] - chunk["start"] if chunk else int(m["body"][field])
        if total >= n:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"{role}: {total} of {n} after {timeout:.0f}s")


def run_pipeline(args: argparse.Namespace, tree: Path, studies: list[list[Path]]) -> dict:
    run = Run(args, tree)
    try:
        pids = {"receiver": run.start("receiver", "receive", "--trust", run.code)}
        for i in range(args.anonymisers):
            pids[f"anonymiser{i + 1}"] = run.start(f"anonymiser{i + 1}", "anonymise")
        pids["weed"] = run.s3.process.pid
        n = sum(len(s) for s in studies)
        meter = CpuMeter(pids)
        s3 = S3Requests(run.s3, run.p.buckets)
        t0 = time.monotonic()
        send(run.port, run.code, studies, args.associations)
        t1 = wait_count(run, "exporter", "instances_staged", n, 1800)
        cpu = meter.ms()
        return {
            "seconds": t1 - t0,
            "rate": n / (t1 - t0),
            "cpu": cpu,
            "n": n,
            "s3": s3.per_instance(n),
        }
    finally:
        run.close()


def run_receive(args: argparse.Namespace, tree: Path, studies: list[list[Path]]) -> dict:
    run = Run(args, tree)
    try:
        pids = {"receiver": run.start("receiver", "receive", "--trust", run.code)}
        pids["weed"] = run.s3.process.pid
        n = sum(len(s) for s in studies)
        meter = CpuMeter(pids)
        s3 = S3Requests(run.s3, run.p.buckets)
        t0 = time.monotonic()
        send(run.port, run.code, studies, args.associations)
        t1 = time.monotonic()
        t2 = wait_count(run, "anonymiser", "instance_count", n, 1800)
        cpu = meter.ms()  # up to the last study.arrived: the relay's uploads included
        return {
            "seconds": t1 - t0,
            "rate": n / (t1 - t0),
            "cpu": cpu,
            "n": n,
            "announced": t2 - t0,
            "s3": s3.per_instance(n),
        }
    finally:
        run.close()


def run_floor(args: argparse.Namespace, tree: Path, studies: list[list[Path]]) -> dict:
    run = Run(args, tree)
    try:
        client = run.s3.client()
        q, s = run.p.buckets["quarantine"], run.p.buckets["staging"]
        for bucket in (q, s):
            client.make_bucket(bucket)
        files = [f for study in studies for f in study]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    FLOOR,
                    run.s3.endpoint,
                    run.s3.access_key,
                    run.s3.secret_key,
                    q,
                    s,
                    *map(str, files[i :: args.anonymisers]),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(args.anonymisers)
        ]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        pids = {f"floor{i + 1}": p.pid for i, p in enumerate(procs)}
        pids["weed"] = run.s3.process.pid
        meter = CpuMeter(pids)
        s3 = S3Requests(run.s3, run.p.buckets)
        t0 = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "done"
        t1 = time.monotonic()
        cpu = meter.ms()
        requests = s3.per_instance(len(files))
        for p in procs:
            p.wait(60)
        return {
            "seconds": t1 - t0,
            "rate": len(files) / (t1 - t0),
            "cpu": cpu,
            "n": len(files),
            "s3": requests,
        }
    finally:
        run.close()


def run_latency(args: argparse.Namespace, tree: Path, files: list[Path]) -> float:
    run = Run(args, tree)
    try:
        run.start("receiver", "receive", "--trust", run.code)
        start = time.monotonic()
        send(run.port, run.code, [files], 1)
        sent = time.monotonic()
        announced = wait_count(run, "anonymiser", "instance_count", len(files), 900)
        print(
            f"  {len(files)} instances: sent in {sent - start:.2f}s, announced"
            f" {announced - start:.2f}s after the first was sent",
            flush=True,
        )
        return announced - sent - args.quiet
    finally:
        run.close()


ENGINE = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from consumers.deid import Deidentifier, DeidPolicy
from smartbox.keys import RegionalKey
engine = Deidentifier(RegionalKey(b"bench-" + b"k" * 32), DeidPolicy(trust_code="BNC"))
datas = [Path(p).read_bytes() for p in sys.argv[2:]]
engine.process(datas[0])
t0 = time.process_time()
for data in datas:
    engine.process(data)
print((time.process_time() - t0) * 1000 / len(datas))
"""


def engine_ms(tree: Path, files: list[Path]) -> float:
    """CPU ms per instance of the tree's engine alone (``Deidentifier.process``, bytes in
    memory, one thread): what the anonymiser's CPU per instance is compared with."""
    out = subprocess.run(
        [sys.executable, "-c", ENGINE, str(tree), *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout.strip())


# --- report ----------------------------------------------------------------------------------
def spread(values: list[float], digits: int = 2) -> str:
    m, lo, hi = statistics.median(values), min(values), max(values)
    return f"{m:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def summary(results: dict[str, list[dict]]) -> list[str]:
    lines = []
    if "pipeline" in results:
        for ref in ("floor", "receive"):
            if ref in results:
                ratios = [
                    a["rate"] / b["rate"]
                    for a, b in zip(results["pipeline"], results[ref], strict=True)
                ]
                lines.append(f"pipeline / {ref}: {spread(ratios)}")
    for mode, runs in results.items():
        lines.append(f"{mode}: {spread([x['rate'] for x in runs])} inst/s")
        for proc in runs[0]["cpu"]:
            lines.append(f"  {proc} CPU ms/inst: {spread([x['cpu'][proc] / x['n'] for x in runs])}")
        kinds = sorted({k for x in runs for k in x["s3"]})
        for kind in kinds:
            values = [x["s3"].get(kind, 0.0) for x in runs]
            lines.append(f"  S3 {kind} requests/inst: {spread(values, 3)}")
    if "pipeline" in results:
        ratios = [x["cpu"]["anonymisers"] / x["cpu"]["engine alone"] for x in results["pipeline"]]
        lines.append(f"anonymisers CPU / engine alone: {spread(ratios)}")
    return lines


def checkout(path: Path) -> tuple[Path, str]:
    if not (path / "smartbox" / "__main__.py").is_file():
        raise SystemExit(f"bench_pipeline: {path} is not a smartbox checkout")
    tree = path.resolve()
    rev = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return tree, rev


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--studies", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--anonymisers", type=int, default=2)
    ap.add_argument("--associations", type=int, default=2)
    ap.add_argument("--quiet", type=float, default=1.0, help="the trust's quiet period (s)")
    ap.add_argument("--latency", default="100,500,2000", help="study sizes ('' for none)")
    ap.add_argument("--latency-rounds", type=int, default=2)
    ap.add_argument("--modes", default="floor,receive,pipeline")
    ap.add_argument("--tree", type=Path, default=ROOT, help="checkout whose smartbox runs")
    ap.add_argument(
        "--baseline", type=Path, help="another checkout, run alternately with --tree each round"
    )
    ap.add_argument("--trust-extra", default="", help="extra lines for the trust file")
    ap.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    try:
        return _main(args)
    finally:
        TRASH.close()


def _main(args: argparse.Namespace) -> int:
    trees = [checkout(p) for p in ([args.baseline] if args.baseline else []) + [args.tree]]
    for tree, rev in trees:
        print(f"tree {tree} ({rev}); load average {loadavg()}", flush=True)
    studies = corpus(args.n, args.studies)
    modes = [m for m in args.modes.split(",") if m]
    runners = {"pipeline": run_pipeline, "receive": run_receive, "floor": run_floor}
    results: dict[str, dict[str, list[dict]]] = {rev: {m: [] for m in modes} for _t, rev in trees}
    for r in range(args.rounds if modes else 0):  # --modes "": latency only
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        for tree, rev in trees if r % 2 == 0 else trees[::-1]:
            for mode in order:
                res = runners[mode](args, tree, studies)
                results[rev][mode].append(res)
                if mode == "pipeline":  # the engine alone, right after, on the same instances
                    res["cpu"]["anonymisers"] = sum(
                        v for k, v in res["cpu"].items() if k.startswith("anonymiser")
                    )
                    res["cpu"]["engine alone"] = engine_ms(tree, studies[0][:200]) * res["n"]
                per = {k: round(v / res["n"], 2) for k, v in res["cpu"].items()}
                extra = f", announced after {res['announced']:.1f}s" if "announced" in res else ""
                print(
                    f"round {r + 1} {rev} {mode:8s} {res['rate']:6.1f} inst/s"
                    f" ({res['seconds']:.1f}s{extra}); CPU ms/inst {json.dumps(per)};"
                    f" S3 requests/inst {json.dumps(res['s3'])}; load {loadavg()}",
                    flush=True,
                )
    lines = {rev: summary(results[rev]) for _t, rev in trees}
    if len(trees) == 2 and "pipeline" in modes:
        (_b, before), (_a, after) = trees
        ratios = [
            a["rate"] / b["rate"]
            for a, b in zip(results[after]["pipeline"], results[before]["pipeline"], strict=True)
        ]
        lines[after].append(f"pipeline rate {after} / {before}: {spread(ratios)}")
    sizes = [int(x) for x in args.latency.split(",") if x]
    if sizes:
        big = [f for s in corpus(max(sizes), 1) for f in s]
        for size in sizes:
            for tree, rev in trees:
                beyond = [run_latency(args, tree, big[:size]) for _ in range(args.latency_rounds)]
                lines[rev].append(
                    f"completion beyond quiet, {size} instances: "
                    + ", ".join(f"{b:.2f}s" for b in beyond)
                )
                print(rev, lines[rev][-1], flush=True)
    for _tree, rev in trees:
        print(f"\nsummary ({rev}, {args.rounds} rounds, load average {loadavg()}):")
        print("\n".join(lines[rev]))
        if args.markdown:
            print("\n| measure | median (min-max) |\n|---|---|")
            for line in lines[rev]:
                if ":" in line:
                    k, v = line.strip().split(":", 1)
                    print(f"| {k} | {v.strip()} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
