"""The one place the stages' services are built, for the ``smartbox`` command and the demo.

A ``Wiring`` is what every service is built from: the adapters (bus, object stores), the
regional key, the trust files and the bucket names. ``Wiring.from_settings`` makes the
production one (RabbitMQ, S3/MinIO, the key and trust files from the environment, exactly what
``preflight`` checked); the demo makes one of in-process adapters. Both then call the same
builders below, so the demo runs the services the way the daemons run them: the same
constructor arguments, the same policy builder, the same defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from smartbox.bus import Bus
from smartbox.keys import RegionalKey
from smartbox.store import ObjectStore
from smartbox.trusts import TrustConfig, TrustRegistry

if TYPE_CHECKING:
    from consumers.anonymiser import Anonymiser
    from consumers.export_policy import ExportPolicy
    from consumers.exporter import Exporter
    from consumers.identity_index import IdentityIndex
    from consumers.ingest import NationalIngest
    from producers.receiver import ReceiverService
    from smartbox.settings import Settings
    from smartbox.signing import Signer, Verifier


@dataclass
class Wiring:
    """The adapters and configuration the services of one process (or of the demo) share."""

    bus: Bus
    store: ObjectStore
    national: ObjectStore | None
    #: the regional key, or how to load it: only the services that pseudonymise ask for it
    #: (the national ingest and the exporter run without the key)
    key_source: RegionalKey | Callable[[], RegionalKey]
    trusts: TrustRegistry
    spool_dir: Path
    quarantine_bucket: str = "quarantine"
    staging_bucket: str = "staging"
    national_bucket: str = "national"
    index: IdentityIndex | None = None

    @property
    def key(self) -> RegionalKey:
        if not isinstance(self.key_source, RegionalKey):
            self.key_source = self.key_source()
        return self.key_source

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        bus: Bus,
        store: ObjectStore,
        national: ObjectStore | None = None,
        *,
        key: RegionalKey | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Wiring:
        """Production wiring: the regional key and trust files from the environment (the
        trust files re-read when they change), the buckets the settings name."""
        return cls(
            bus=bus,
            store=store,
            national=national,
            key_source=key if key is not None else lambda: RegionalKey.from_env(environ),
            trusts=TrustRegistry(settings.trusts_dir),
            spool_dir=settings.spool_dir,
            quarantine_bucket=settings.quarantine_bucket,
            staging_bucket=settings.staging_bucket,
            national_bucket=settings.national_bucket,
        )

    @classmethod
    def in_process(
        cls,
        bus: Bus,
        store: ObjectStore,
        national: ObjectStore,
        key: RegionalKey,
        trusts: dict[str, TrustConfig],
        spool_dir: Path,
    ) -> Wiring:
        """The demo's wiring: fixed trust files, the default bucket names."""
        return cls(bus, store, national, key, TrustRegistry(None, static=trusts), spool_dir)


def receiver(
    w: Wiring, trust: TrustConfig, *, key: RegionalKey | None = None, poll_seconds: float = 0.5
) -> ReceiverService:
    """A trust's receiver (C-STORE SCP, spool, ledger, relay to quarantine). `key`: the
    receiver's own intake key (``producers.receiver.intake_key``), else the wiring's."""
    from producers.receiver import ReceiverService

    return ReceiverService(
        trust,
        spool_dir=w.spool_dir,
        store=w.store,
        bus=w.bus,
        key=key if key is not None else w.key,
        quarantine_bucket=w.quarantine_bucket,
        poll_seconds=poll_seconds,
    )


def anonymiser(
    w: Wiring, *, identity_index: bool = True, environ: Mapping[str, str] | None = None
) -> Anonymiser:
    """The anonymiser, with the one policy builder (``consumers.deid.policy``) as
    ``smartbox deidentify`` and ``check-config`` use it, and the identity index when
    ``SMARTBOX_IDENTITY_INDEX_KEY`` is set (`identity_index`)."""
    import logging

    from consumers.anonymiser import Anonymiser, Buckets
    from consumers.deid.policy import PolicyBuilder
    from consumers.identity_index import IdentityIndex

    index = w.index
    if index is None and identity_index:
        index = IdentityIndex.from_env(w.store, environ)
        if index is None:
            logging.getLogger("smartbox.anonymiser").warning(
                "no SMARTBOX_IDENTITY_INDEX_KEY: no identity index is kept, so a later key "
                "rotation could not link patients' histories (docs/deidentification.md)"
            )
    return Anonymiser(
        w.store,
        w.bus,
        w.key,
        w.trusts,
        Buckets(w.quarantine_bucket, w.staging_bucket),
        policies=PolicyBuilder.from_env(environ),
        index=index,
    )


def exporter(w: Wiring, *, signer: Signer, policy: ExportPolicy | None = None) -> Exporter:
    """The exporter (state in object storage, signed batches to the national destination)."""
    from consumers.exporter import Exporter

    if w.national is None:
        raise ValueError("the exporter needs the national destination's object store")
    return Exporter(
        w.store,
        w.national,
        w.bus,
        signer=signer,
        policy=policy,
        staging_bucket=w.staging_bucket,
        national_bucket=w.national_bucket,
        trusts=w.trusts,
        quarantine_bucket=w.quarantine_bucket,
    )


def ingest(
    w: Wiring, *, verifier: Verifier, archive_bucket: str = "national-archive"
) -> NationalIngest:
    """The national reference consumer of the export queue."""
    from consumers.ingest import NationalIngest

    if w.national is None:
        raise ValueError("national ingest needs the national destination's object store")
    return NationalIngest(w.national, w.bus, verifier=verifier, archive_bucket=archive_bucket)
