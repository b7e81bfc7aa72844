"""A trust's receiver process: SCP + spool + relay, wired to a bus and an object store."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from smartbox.bus import Bus
from smartbox.config import TrustConfig
from smartbox.keys import RegionalKey
from smartbox.store import ObjectStore

from .relay import Relay
from .scp import StoreSCP
from .spool import Spool

log = logging.getLogger(__name__)


class ReceiverService:
    """Owns one trust's SCP, spool and relay. ``start`` returns the bound (host, port)."""

    def __init__(
        self,
        trust: TrustConfig,
        *,
        spool_dir: Path,
        store: ObjectStore,
        bus: Bus,
        key: RegionalKey,
        quarantine_bucket: str = "quarantine",
        poll_seconds: float = 0.5,
    ) -> None:
        self.trust = trust
        self.spool = Spool(spool_dir / trust.code)
        self.scp = StoreSCP(trust, self.spool, key)
        self.relay = Relay(
            trust, self.spool, store, bus, quarantine_bucket, poll_seconds=poll_seconds
        )
        self.store = store
        self.bucket = quarantine_bucket
        self.address: tuple[str, int] | None = None

    def start(self, stop: threading.Event) -> tuple[str, int]:
        self.address = self.scp.start()
        self.relay.start(stop)
        log.info(
            "receiver %s (%s) listening on %s:%d as AE %s",
            self.trust.code,
            self.trust.name,
            self.address[0],
            self.address[1],
            self.trust.ae_title,
        )
        return self.address

    def stop(self) -> None:
        self.scp.stop()
        self.relay.join(timeout=10)
        self.spool.close()
