"""Receiver test kit: a receiver running in the test process (in-process bus and local object
store, real sockets), a pynetdicom sender that sends files byte for byte, and file helpers."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from pydicom.filereader import _read_file_meta_info, read_preamble
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

from producers.receiver import ReceiverService
from producers.receiver.pynetdicom_compat import RejectionWatch
from smartbox.bus import MemoryBus
from smartbox.keys import RegionalKey
from smartbox.store import LocalStore
from smartbox.topology import Topology
from smartbox.trusts import TrustConfig

KEY = RegionalKey(b"receiver-tests-" + b"7" * 32)
CALLER = "TEST_PACS"


def announced_instances(message: dict[str, Any]) -> int:
    """How many instances one study.arrived covers (its chunk's slice, or the whole batch)."""
    chunk = message["body"].get("chunk")
    return chunk["stop"] - chunk["start"] if chunk else int(message["body"]["instance_count"])


def trust_code() -> str:
    """A fresh trust code, so that each test reads its own metric series."""
    return "T" + uuid.uuid4().hex[:6].upper()


def make_trust(code: str | None = None, **fields: Any) -> TrustConfig:
    code = code or trust_code()
    base = TrustConfig(
        code=code,
        name=f"Test trust {code}",
        ae_title=f"SB_{code}",
        port=0,
        allowed_callers=(CALLER,),
        source_file=Path(f"<test {code}>"),
        bind_host="127.0.0.1",
        quiet_seconds=0.5,
        max_wait_seconds=600,
    )
    return replace(base, **fields)


@dataclass
class LocalReceiver:
    """One trust's receiver in this process; the SCP in ``workers`` processes (0: threads)."""

    trust: TrustConfig
    root: Path
    workers: int = 0
    bus: MemoryBus = field(default_factory=lambda: MemoryBus(Topology(f"r{uuid.uuid4().hex[:6]}")))
    key: RegionalKey = KEY  # the receiver's own key (`smartbox receive`: intake_key.load)
    #: the object store (default: a ``LocalStore`` under ``root``)
    object_store: LocalStore | None = None

    def __post_init__(self) -> None:
        self.store = self.object_store or LocalStore(self.root / "objects")
        self.stop_event = threading.Event()
        self.service = ReceiverService(
            self.trust,
            spool_dir=self.root / "spool",
            store=self.store,
            bus=self.bus,
            key=self.key,
            poll_seconds=0.1,
            workers=self.workers,
        )
        self.host, self.port = self.service.start(self.stop_event)

    @property
    def code(self) -> str:
        return self.trust.code

    def close(self) -> None:
        self.stop_event.set()
        self.service.stop(grace_seconds=5)

    def arrived(self) -> list[dict[str, Any]]:
        """study.arrived messages published so far (left on the queue)."""
        return [m for m, _h in self.bus.messages(self.bus.topology.queue("anonymiser"))]

    def arrived_count(self) -> int:
        """Instances announced: each chunk of a batch counts its own slice."""
        return sum(announced_instances(m) for m in self.arrived())

    def quarantine_keys(self) -> list[str]:
        """Keys of the instance objects in quarantine (not the batch manifests)."""
        try:
            return [k for k in self.store.list_keys("quarantine") if k.endswith(".dcm")]
        except Exception:  # noqa: BLE001 - no bucket yet
            return []

    def quarantine(self) -> dict[str, bytes]:
        """Every instance object in quarantine, by key."""
        return {k: self.store.get_bytes("quarantine", k) for k in self.quarantine_keys()}

    def batch(self, message: dict[str, Any]) -> dict[str, Any]:
        body = message["body"]
        return json.loads(self.store.get_bytes(body["bucket"], body["batch_key"]))

    def metric(self, name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"trust": self.code, **labels}) or 0.0


@contextmanager
def local_receiver(root: Path, workers: int = 0, **fields: Any) -> Iterator[LocalReceiver]:
    receiver = LocalReceiver(make_trust(**fields), root, workers)
    try:
        yield receiver
    finally:
        receiver.close()


@dataclass
class SendResult:
    established: bool
    statuses: list[int]
    reject: tuple[int, int, int] | None = None  # (result, source, diagnostic) of A-ASSOCIATE-RJ
    accepted_contexts: int = 0


def _context_for(path: Path) -> tuple[str, str]:
    with open(path, "rb") as f:
        read_preamble(f, False)
        meta = _read_file_meta_info(f)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def send_files(
    host: str,
    port: int,
    called: str,
    files: Iterable[Path],
    *,
    calling: str = CALLER,
    tls: Any = None,
    max_pdu: int = 16382,
) -> SendResult:
    """Send files over one association exactly as stored (pynetdicom never decodes them:
    ``STORE_SEND_CHUNKED_DATASET``); one presentation context per SOP class and syntax."""
    files = list(files)
    ae = AE(ae_title=calling)
    ae.maximum_pdu_size = max_pdu
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    contexts = sorted({_context_for(p) for p in files})
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in contexts]
    kwargs = {"tls_args": (tls, "localhost")} if tls is not None else {}
    watch = RejectionWatch()  # is_rejected alone misses a fast RJ under load
    assoc = ae.associate(host, port, ae_title=called, evt_handlers=[watch.handler], **kwargs)
    if not assoc.is_established:
        ae.shutdown()
        return SendResult(False, [], watch.rejection)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    statuses = []
    try:
        for path in files:
            rsp = assoc.send_c_store(path)
            statuses.append(int(rsp.Status) if rsp and "Status" in rsp else -1)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        accepted = len(assoc.accepted_contexts)
        assoc.release()
        ae.shutdown()
    return SendResult(True, statuses, None, accepted)


def dataset_bytes(data_or_path: bytes | Path) -> bytes:
    """The encoded dataset of a DICOM file (everything after its File Meta Information)."""
    import io

    f = open(data_or_path, "rb") if isinstance(data_or_path, Path) else io.BytesIO(data_or_path)
    with f:
        read_preamble(f, False)
        _read_file_meta_info(f)
        return f.read()


def storescu(
    host: str, port: int, called: str, files: list[Path], *extra: str, calling: str = CALLER
) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu (TCP_NODELAY=1: Debian's build otherwise waits on Nagle)."""
    return subprocess.run(
        ["/usr/bin/storescu", "-aet", calling, "-aec", called, *extra, host, str(port)]
        + [str(f) for f in files],
        env=dict(os.environ, TCP_NODELAY="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
