"""The whole pipeline in the test process: a real receiver on loopback (pynetdicom sends the
studies), the real anonymiser, exporter and national ingest, on the in-process bus and
local-directory object stores. ``day`` runs its block on another date: the wall clock of the
process is moved there (durations stay true: the offset is constant) and every object written
inside it is re-dated, so a test builds several days of records in seconds."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

from consumers.anonymiser import Anonymiser
from consumers.export_policy import ExportPolicy
from consumers.exporter import Exporter
from consumers.ingest import NationalIngest
from smartbox import layout
from smartbox.signing import Signer
from smartbox.store import LocalStore
from smartbox.synthetic import SyntheticStudy

from .receiver_env import KEY, LocalReceiver, make_trust, send_files
from .util import wait_for


@dataclass
class LocalPipeline:
    root: Path
    code: str
    receiver: LocalReceiver
    national: LocalStore
    exporter: Exporter
    stop: threading.Event
    sent_batches: int = 0
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def store(self) -> LocalStore:
        return self.receiver.store

    def _manifests(self) -> list[str]:
        try:
            return [
                k for k in self.store.list_keys("staging", f"{self.code}/") if "/manifest-" in k
            ]
        except Exception:  # noqa: BLE001 - no staging bucket before the first study
            return []

    def _export_states(self) -> list[str]:
        """The state of the exporter's record of each staged batch."""
        prefix = layout.record_key(self.code, "0" * 32).rsplit("/", 1)[0] + "/"
        return [
            json.loads(self.store.get_bytes("staging", k))["state"]
            for k in self.store.list_keys("staging", prefix)
        ]

    def send(self, study: SyntheticStudy) -> None:
        """Send one study over one association; wait until it is staged (or held back)."""
        directory = self.root / "outbox" / f"{self.sent_batches:04d}"
        files = study.write(directory)
        result = send_files(
            self.receiver.host, self.receiver.port, self.receiver.trust.ae_title, files
        )
        assert result.established and set(result.statuses) == {0}, result
        for f in files:  # the identifiable originals leave with the test, not later
            f.unlink()
        self.sent_batches += 1
        wait_for(lambda: len(self._manifests()) >= self.sent_batches, 60, "study staged")
        # recorded by the exporter (its day marker is written last), not only taken off its queue
        days = layout.day_prefix(self.code, "d").rsplit("/", 2)[0] + "/"
        wait_for(
            lambda: len(list(self.store.list_keys("staging", days))) >= self.sent_batches,
            30,
            "study recorded by the exporter",
        )

    def export(self) -> int:
        """One export pass; wait for the national side's receipt. Instances exported."""
        summary = self.exporter.export_pass()
        assert not summary.failed_trusts, summary
        # acted on, not only arrived: a study still "sent" when the clock moves on to the next
        # day would be re-sent as unanswered
        wait_for(lambda: "sent" not in self._export_states(), 60, "every receipt acted on")
        return summary.total_instances

    @contextmanager
    def day(self, when: datetime) -> Iterator[None]:
        """Run the block on the day of ``when``: ``time.time()`` reads that day, and every
        object written to the box's store inside the block is dated ``when``."""
        objects = self.root / "objects"
        before = {p: p.stat().st_mtime_ns for p in objects.rglob("*") if p.is_file()}
        real, offset = time.time, when.timestamp() - time.time()
        with mock.patch("time.time", lambda: real() + offset):
            yield
        stamp = when.timestamp()
        for path in objects.rglob("*"):
            if path.is_file() and before.get(path) != path.stat().st_mtime_ns:
                os.utime(path, (stamp, stamp))

    def staging_records(self) -> list[dict[str, Any]]:
        return [json.loads(self.store.get_bytes("staging", k)) for k in self._manifests()]


@contextmanager
def local_pipeline(root: Path, code: str) -> Iterator[LocalPipeline]:
    """A running pipeline for one trust (the trust file is written to ``root/trusts``)."""
    trust = make_trust(code, name=f"Test Trust {code}")
    (root / "trusts").mkdir(parents=True, exist_ok=True)
    (root / "trusts" / f"{code}.toml").write_text(
        f'code = "{code}"\nname = "{trust.name}"\nae_title = "{trust.ae_title}"\nport = 0\n'
        f'allowed_callers = ["{trust.allowed_callers[0]}"]\n',
        encoding="utf-8",
    )
    receiver = LocalReceiver(trust, root)
    store, bus = receiver.store, receiver.bus
    store.ensure_bucket("staging")
    national = LocalStore(root / "national")
    anonymiser = Anonymiser(store, bus, KEY, {code: trust}, workers=2)
    signer = Signer.generate()
    # no export window: a pass exports everything whatever the (moved) time of day
    exporter = Exporter(store, national, bus, signer=signer, policy=ExportPolicy(window_end=None))
    ingest = NationalIngest(national, bus, verifier=signer.verifier())
    stop = threading.Event()
    pipeline = LocalPipeline(root, code, receiver, national, exporter, stop)
    for role, handler in (
        ("anonymiser", anonymiser.handle),
        ("exporter", exporter.handle),
        ("national.ingest", ingest.handle),
        ("export.receipts", exporter.handle_receipt),
    ):
        t = threading.Thread(
            target=bus.consume, args=(role, handler), kwargs={"stop": stop}, daemon=True
        )
        t.start()
        pipeline.threads.append(t)
    try:
        yield pipeline
    finally:
        stop.set()
        receiver.close()
        for t in pipeline.threads:
            t.join(timeout=5)
