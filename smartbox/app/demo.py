"""``smartbox demo``: the whole pipeline on one machine, with nothing to install.

The trusts of the trust files (``--trusts``, else ``SMARTBOX_TRUSTS_DIR``, else the repository's
``trusts/``: their codes, names, AE titles, callers and profile options; ports are chosen free
on 127.0.0.1 so the demo never collides with a running receiver) get a receiver each on a real
DICOM port; synthetic identifiable CT studies are sent to them over real associations
(pynetdicom as the PACS, calling as the trust's first allowed caller); the anonymiser, exporter
and national ingest run as in production but on the in-process bus and local-directory object
stores (the same interfaces as RabbitMQ and MinIO). The export is triggered, and a per-trust
table shows what was received, staged, held back, exported and ingested. Exit status 0 only if
every instance sent arrived, verified, at the national side.

Its folder holds identifiable synthetic originals (spool, quarantine): a temporary folder is
removed at the end; ``--workdir DIR`` keeps everything there, and says so. ``--keep-running``
keeps the pipeline and its metrics endpoint serving after the table, until Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client import REGISTRY
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from smartbox import metrics
from smartbox.bus import MemoryBus
from smartbox.errors import ConfigError
from smartbox.keys import RegionalKey
from smartbox.signing import Signer
from smartbox.store import LocalStore
from smartbox.synthetic import make_ct_study
from smartbox.trusts import TrustConfig, load_all_trusts

#: only when no trust file is found (an installed package without the repository)
DEMO_TRUSTS = [
    ("RGT", "Cambridge University Hospitals"),
    ("RTH", "Oxford University Hospitals"),
    ("RRK", "University Hospitals Birmingham"),
]
CALLER = "DEMOPACS"
REPO_TRUSTS = Path(__file__).resolve().parents[2] / "trusts"


def demo_trusts(trusts_dir: str | None) -> tuple[dict[str, TrustConfig], str]:
    """The trusts the demo runs and where they came from: the trust files of ``trusts_dir``
    (else ``SMARTBOX_TRUSTS_DIR``, else the repository's ``trusts/``), on free loopback ports,
    without TLS or network restrictions, completing studies after 1 s; the built-in three
    only when there is no trust file at all."""
    env = os.environ.get("SMARTBOX_TRUSTS_DIR", "").strip()
    folder = Path(trusts_dir or env or REPO_TRUSTS)
    if trusts_dir and not folder.is_dir():
        raise ConfigError(f"--trusts {folder}: no such directory")
    found = load_all_trusts(folder) if folder.is_dir() else {}
    demo = {
        code: dataclasses.replace(
            trust,
            port=0,
            bind_host="127.0.0.1",
            allowed_networks=(),
            tls=None,
            quiet_seconds=1.0,
            max_wait_seconds=60.0,
        )
        for code, trust in found.items()
        if trust.allowed_callers
    }
    if demo:
        return demo, f"the trust files in {folder}"
    builtin = {
        code: TrustConfig(
            code=code,
            name=name,
            ae_title=f"SMARTBOX_{code}",
            port=0,
            allowed_callers=(CALLER,),
            source_file=Path(f"<demo {code}>"),
            bind_host="127.0.0.1",
            quiet_seconds=1.0,
            max_wait_seconds=60.0,
        )
        for code, name in DEMO_TRUSTS
    }
    return builtin, f"three built-in trusts (no trust file in {folder})"


def _value(name: str, **labels: str) -> int:
    return int(REGISTRY.get_sample_value(name, labels) or 0)


def send_study(
    host: str,
    port: int,
    called_ae: str,
    datasets: list,
    calling_ae: str = CALLER,
    tls: ssl.SSLContext | None = None,
) -> list[int]:
    """Send datasets over one association (DICOM TLS with `tls`); the C-STORE status of each
    (-1: no response)."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    tls_args = (tls, host) if tls is not None else None
    assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls_args)
    if not assoc.is_established:
        return [-1] * len(datasets)
    statuses = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
    finally:
        assoc.release()
    return statuses


def run_demo(
    *,
    studies: int = 2,
    series: int = 2,
    per_series: int = 3,
    workdir: str | None = None,
    metrics_port: int | None = 0,
    metrics_host: str = "127.0.0.1",
    keep_running: bool = False,
    trusts_dir: str | None = None,
    out=sys.stdout,
) -> int:
    """Run the demo (see the module docstring); its exit status."""
    trusts, trusts_note = demo_trusts(trusts_dir)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="smartbox-demo-"))
    try:
        return _run(
            root,
            trusts,
            trusts_note,
            studies,
            series,
            per_series,
            workdir is not None,
            metrics_port,
            metrics_host,
            keep_running,
            out,
        )
    finally:
        if workdir is None:  # spool and quarantine hold identifiable synthetic originals
            shutil.rmtree(root, ignore_errors=True)
            print(f"removed {root} (synthetic originals, staged and national copies)", file=out)
        else:
            print(f"kept in {root}: spool, objects (quarantine, staging), national", file=out)


def _run(
    root: Path,
    trusts: dict[str, TrustConfig],
    trusts_note: str,
    studies: int,
    series: int,
    per_series: int,
    kept: bool,
    metrics_port: int | None,
    metrics_host: str,
    keep_running: bool,
    out,
) -> int:
    from . import factories

    if "SMARTBOX_PSEUDONYM_KEY" in os.environ or "SMARTBOX_PSEUDONYM_KEY_FILE" in os.environ:
        key = RegionalKey.from_env()
        key_note = f"key version {key.version} from the environment"
    else:
        key = RegionalKey(secrets.token_hex(32).encode(), "demo")
        key_note = "a random throwaway key (set SMARTBOX_PSEUDONYM_KEY to use yours)"
    store = LocalStore(root / "objects")
    national = LocalStore(root / "national")
    for bucket in ("quarantine", "staging"):
        store.ensure_bucket(bucket)
    bus = MemoryBus()
    stop = threading.Event()
    server = None
    if metrics_port is not None:
        server = metrics.MetricsServer(metrics_host, metrics_port).start()
    where = "kept: --workdir" if kept else "temporary: removed at the end; --workdir DIR keeps it"
    print(f"smartbox demo in {root} ({where}); pseudonyms from {key_note}", file=out)
    print(f"trusts: {', '.join(trusts)} from {trusts_note}", file=out)
    # the services the daemons run, built by the same factories from in-process adapters
    wiring = factories.Wiring.in_process(bus, store, national, key, trusts, root / "spool")
    services = {}
    for code, trust in trusts.items():
        svc = factories.receiver(wiring, trust, poll_seconds=0.2)
        services[code] = (svc, svc.start(stop))
    # no identity index: the demo's key is thrown away with its folder
    anonymiser = factories.anonymiser(wiring, identity_index=False)
    signer = Signer.generate()  # a throwaway signing key; the national side gets its public half
    exporter = factories.exporter(wiring, signer=signer)
    ingest = factories.ingest(wiring, verifier=signer.verifier())
    threads = [
        threading.Thread(
            target=bus.consume, args=(role, handler), kwargs={"stop": stop}, daemon=True
        )
        for role, handler in (
            ("anonymiser", anonymiser.handle),
            ("exporter", exporter.handle),
            ("national.ingest", ingest.handle),
        )
    ]
    for t in threads:
        t.start()
    sent: dict[str, int] = {}
    try:
        for n, (code, (svc, (host, port))) in enumerate(services.items()):
            sent[code] = 0
            for s in range(studies):
                study = make_ct_study(1000 * n + s, series=series, per_series=per_series)
                statuses = send_study(
                    host, port, svc.trust.ae_title, study.datasets, svc.trust.allowed_callers[0]
                )
                sent[code] += sum(1 for st in statuses if st == 0)
                if any(st != 0 for st in statuses):
                    print(f"{code}: {sum(st != 0 for st in statuses)} C-STORE failures", file=out)
            print(f"{code}: sent {sent[code]} instances to {host}:{port}", file=out)
        total = sum(sent.values())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = sum(
                _value("smartbox_instances_staged_total", trust=c) + sum(_held(c).values())
                for c in trusts
            )
            if done >= total and bus.depth(bus.topology.queue("exporter")) == 0:
                break
            time.sleep(0.2)
        time.sleep(0.3)
        summary = exporter.export_pass()
        expected_batches = sum(len(ids) for ids in summary.batches.values())
        deadline = time.monotonic() + 120
        receipts_queue = bus.topology.queue("export.receipts")
        while time.monotonic() < deadline:
            if bus.depth(receipts_queue) >= expected_batches:
                break
            time.sleep(0.2)
        receipts = [m for m, _h in bus.messages(receipts_queue)]
        ingested = {c: 0 for c in trusts}
        for r in receipts:
            ingested[r["trust"]] += r["body"]["instances_verified"]
        rows = []
        ok = True
        for code in trusts:
            held = sum(_held(code).values())
            row = (
                code,
                sent[code],
                _value("smartbox_instances_received_total", trust=code),
                _value("smartbox_instances_staged_total", trust=code),
                held,
                summary.instances.get(code, 0),
                ingested[code],
            )
            rows.append(row)
            ok = ok and ingested[code] == sent[code] and held == 0
        _table(rows, out)
        dlq = sum(bus.depth(bus.topology.dlq(r)) for r in bus.topology.roles())
        if dlq:
            print(f"dead-lettered messages: {dlq}", file=out)
            ok = False
        if server:
            print(f"metrics: http://{metrics_host}:{server.port}/metrics", file=out)
        if kept:
            print(f"national copy: {root / 'national'}", file=out)
        print(
            "demo OK: every instance sent arrived at the national side"
            if ok
            else "demo FAILED: counts differ",
            file=out,
        )
        if keep_running:
            _serve(services, server, metrics_host, out)
        return 0 if ok else 1
    finally:
        stop.set()
        for svc, _addr in services.values():
            svc.stop()
        for t in threads:
            t.join(timeout=5)
        if server:
            server.stop()


def _serve(services: dict, server: metrics.MetricsServer | None, host: str, out) -> None:
    """``--keep-running``: the receivers and the metrics endpoint go on until SIGINT/SIGTERM."""
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    for code, (svc, (rhost, rport)) in services.items():
        print(f"{code}: receiver {svc.trust.ae_title} at {rhost}:{rport}", file=out)
    if server:
        print(f"serving http://{host}:{server.port}/metrics until Ctrl-C", file=out, flush=True)
    done.wait()


def _held(code: str) -> dict[str, int]:
    result: dict[str, int] = {}
    for metric in REGISTRY.collect():
        if metric.name != "smartbox_instances_held_back":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("trust") == code:
                result[sample.labels["reason"]] = int(sample.value)
    return result


def _table(rows: list[tuple], out) -> None:
    head = ("trust", "sent", "received", "staged", "held back", "exported", "ingested")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    line = "  ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True))
    print(line, file=out)
    print("-" * len(line), file=out)
    for row in rows:
        print("  ".join(f"{v!s:>{w}}" for v, w in zip(row, widths, strict=True)), file=out)
