"""Memory of a region's receivers: N trusts, one ``smartbox receive`` each, summed.

    .venv/bin/python bench/receiver/bench_memory.py [--trusts 13] [--instances 40] \
        [--workers default,1,2,4] [--markdown]

For each worker setting, N trust files are written to a temporary folder (the shape of
``trusts/``: only code, port and caller differ; ``quiet_seconds = 2`` so that studies are
announced during the run; ``workers`` set only when the setting is not ``default``), and N real
``smartbox receive`` processes are started against the RabbitMQ at ``SMARTBOX_BENCH_AMQP_URL``
(default 127.0.0.1:5672, a private namespace) and a ``weed mini`` S3 server started here. Each
trust is sent one CT study of ``--instances`` instances (512x512, 0.53 MB) with dcmtk's storescu,
so every process has done real work (imports, an association, the relay's uploads and its
publish) before it is measured; the measurement waits for every spool to be empty. Then, for
each receiver and its SCP worker processes (its children), from ``/proc``: **RSS**
(``VmRSS``, counts shared pages once per process: the conservative sum) and **PSS** (``Pss`` from
``smaps_rollup``, shared pages divided among the processes sharing them: what the box actually
spends). Reported in MiB, per trust and in all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers.services import start_s3_server  # noqa: E402

from bench.receiver.targets import free_port  # noqa: E402
from smartbox.rabbit import RabbitBus, connection_parameters  # noqa: E402
from smartbox.synthetic import make_ct_study  # noqa: E402
from smartbox.topology import Topology  # noqa: E402

AMQP = os.environ.get("SMARTBOX_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
KEY = "bench-" + "7" * 40


def trust_file(code: str, port: int, workers: str) -> str:
    text = (
        f'code = "{code}"\nname = "Bench trust {code}"\nae_title = "SMARTBOX_{code}"\n'
        f'port = {port}\nallowed_callers = ["{code}_PACS"]\nbind_host = "127.0.0.1"\n'
        'nhs_number_attribute = "PatientID"\nquiet_seconds = 2\nmax_wait_seconds = 3600\n'
    )
    if workers != "default":
        text += f"workers = {int(workers)}\n"
    return text


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out += tree(int(child))
    return out


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_http(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-800:]
            raise RuntimeError(f"a receiver exited with {proc.returncode}: {tail}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("a receiver did not serve /healthz")


def run(workers: str, n_trusts: int, files: list[Path], s3, work: Path) -> dict[str, float]:
    namespace = f"mem{uuid.uuid4().hex[:8]}"
    root = work / f"workers-{workers}"
    (root / "trusts").mkdir(parents=True)
    bus = RabbitBus(AMQP, Topology(namespace))
    bus.declare()
    env = dict(
        os.environ,
        **s3.env(),
        SMARTBOX_AMQP_URL=AMQP,
        SMARTBOX_NAMESPACE=namespace,
        SMARTBOX_QUARANTINE_BUCKET=f"quarantine-{namespace}",
        SMARTBOX_TRUSTS_DIR=str(root / "trusts"),
        SMARTBOX_SPOOL_DIR=str(root / "spool"),
        SMARTBOX_PSEUDONYM_KEY=KEY,
        SMARTBOX_LOG_LEVEL="WARNING",
    )
    procs: list[tuple[str, int, int, subprocess.Popen]] = []
    try:
        for i in range(n_trusts):
            code, port, mport = f"RB{i + 1:02d}", free_port(), free_port()
            (root / "trusts" / f"{code}.toml").write_text(trust_file(code, port, workers))
            log = open(root / f"{code}.log", "wb")  # noqa: SIM115 - closed with the process
            cmd = [sys.executable, "-m", "smartbox", "receive", "--trust", code]
            popen = subprocess.Popen(
                [*cmd, "--metrics-port", str(mport)], env=env, stdout=log, stderr=log, cwd=ROOT
            )
            procs.append((code, port, mport, popen))
        for code, _port, mport, popen in procs:
            wait_http(mport, popen, root / f"{code}.log")
        for code, port, _mport, _popen in procs:
            result = subprocess.run(
                ["/usr/bin/storescu", "-aet", f"{code}_PACS", "-aec", f"SMARTBOX_{code}"]
                + ["127.0.0.1", str(port), *map(str, files)],
                env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
                capture_output=True,
                timeout=300,
            )
            if result.returncode != 0:
                raise RuntimeError(f"storescu to {code} failed: {result.stderr[-300:]!r}")
        deadline = time.monotonic() + 300
        for code, _port, mport, _popen in procs:
            while metric(mport, "smartbox_instances_published_total") < len(files):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{code}: the relay did not publish everything")
                time.sleep(0.5)
        rss = pss = n_procs = 0
        for _code, _port, _mport, popen in procs:
            for pid in tree(popen.pid):
                r, p = memory_kib(pid)
                rss, pss, n_procs = rss + r, pss + p, n_procs + 1
        return {"processes": n_procs, "rss_mib": rss / 1024, "pss_mib": pss / 1024}
    finally:
        for *_rest, popen in procs:
            popen.send_signal(signal.SIGTERM)
        for *_rest, popen in procs:
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
        bus.close()
        _drop_namespace(namespace)


def _drop_namespace(namespace: str) -> None:
    import pika

    topo = Topology(namespace)
    conn = pika.BlockingConnection(connection_parameters(AMQP))
    ch = conn.channel()
    for role in topo.roles():
        ch.queue_delete(topo.queue(role))
        ch.queue_delete(topo.dlq(role))
    ch.exchange_delete(topo.exchange)
    ch.exchange_delete(topo.dlx)
    conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--trusts", type=int, default=13)
    ap.add_argument("--instances", type=int, default=40, help="per trust, one study")
    ap.add_argument("--workers", default="default,1,2", help="comma-separated: default or N")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    work = Path(tempfile.mkdtemp(prefix="smartbox-bench-memory-"))
    s3 = start_s3_server(weed, work / "weed")
    rows = []
    try:
        files = make_ct_study(9000, series=1, per_series=args.instances, rows=512, columns=512)
        paths = files.write(work / "study")
        for workers in args.workers.split(","):
            result = run(workers.strip(), args.trusts, paths, s3, work)
            rows.append((workers.strip(), result))
            print(f"workers={workers}: {result}", file=sys.stderr)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    cpus = os.cpu_count()
    print(f"{args.trusts} receivers, {args.instances} instances each, {cpus} CPUs")
    if args.markdown:
        print("| workers | processes | RSS MiB (all) | PSS MiB (all) | PSS MiB per trust |")
        print("|---|---|---|---|---|")
    for workers, r in rows:
        per = r["pss_mib"] / args.trusts
        if args.markdown:
            print(
                f"| {workers} | {r['processes']:.0f} | {r['rss_mib']:.0f} | {r['pss_mib']:.0f} "
                f"| {per:.0f} |"
            )
        else:
            print(
                f"workers={workers}: {r['processes']:.0f} processes, RSS {r['rss_mib']:.0f} MiB, "
                f"PSS {r['pss_mib']:.0f} MiB ({per:.0f} per trust)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
