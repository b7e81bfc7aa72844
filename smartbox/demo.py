"""``smartbox demo``: the whole pipeline on one machine, with nothing to install.

Three trusts' receivers listen on real DICOM ports; synthetic identifiable CT studies are sent
to them over real associations (pynetdicom as the PACS); the anonymiser, exporter and national
ingest run as in production but on the in-process bus and local-directory object stores (the
same interfaces as RabbitMQ and MinIO). The export is triggered, and a per-trust table shows
what was received, staged, held back, exported and ingested. Exit status 0 only if every
instance sent arrived, verified, at the national side.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client import REGISTRY
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from . import metrics
from .bus import MemoryBus
from .config import TrustConfig
from .keys import RegionalKey
from .signing import Signer
from .store import LocalStore
from .synthetic import make_ct_study

DEMO_TRUSTS = [
    ("RGT", "Cambridge University Hospitals"),
    ("RTH", "Oxford University Hospitals"),
    ("RRK", "University Hospitals Birmingham"),
]
CALLER = "DEMOPACS"


def _value(name: str, **labels: str) -> int:
    return int(REGISTRY.get_sample_value(name, labels) or 0)


def send_study(host: str, port: int, called_ae: str, datasets: list) -> list[int]:
    """Send datasets over one association; the C-STORE status of each (-1: no response)."""
    ae = AE(ae_title=CALLER)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(host, port, ae_title=called_ae)
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
    out=sys.stdout,
) -> int:
    from consumers.anonymiser import Anonymiser
    from consumers.exporter import Exporter
    from consumers.ingest import NationalIngest
    from producers.receiver import ReceiverService

    root = Path(workdir or tempfile.mkdtemp(prefix="smartbox-demo-"))
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
    trusts = {
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
    stop = threading.Event()
    server = None
    if metrics_port is not None:
        server = metrics.MetricsServer(metrics_host, metrics_port).start()
    print(f"smartbox demo in {root}; pseudonyms from {key_note}", file=out)
    services = {}
    for code, trust in trusts.items():
        svc = ReceiverService(
            trust, spool_dir=root / "spool", store=store, bus=bus, key=key, poll_seconds=0.2
        )
        services[code] = (svc, svc.start(stop))
    anonymiser = Anonymiser(store, bus, key, trusts)
    signer = Signer.generate()  # a throwaway signing key; the national side gets its public half
    exporter = Exporter(store, national, bus, signer=signer)
    ingest = NationalIngest(national, bus, verifier=signer.verifier())
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
                statuses = send_study(host, port, svc.trust.ae_title, study.datasets)
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
            print(f"metrics: http://127.0.0.1:{server.port}/metrics", file=out)
        print(f"national copy: {root / 'national'}", file=out)
        print(
            "demo OK: every instance sent arrived at the national side"
            if ok
            else "demo FAILED: counts differ",
            file=out,
        )
        return 0 if ok else 1
    finally:
        stop.set()
        for svc, _addr in services.values():
            svc.stop()
        for t in threads:
            t.join(timeout=5)
        if server:
            server.stop()


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
