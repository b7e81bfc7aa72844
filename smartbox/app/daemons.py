"""The long-running processes of ``smartbox``: ``receive``, ``anonymise``, ``export`` and
``ingest``, each built by the factories from the production adapters (``smartbox.runtime``)
after ``preflight`` checked everything they need."""

from __future__ import annotations

import argparse

from smartbox.keys import RegionalKey
from smartbox.process import freeze_startup_objects
from smartbox.settings import Settings
from smartbox.trusts import load_trust


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the daemon ``args.command`` until SIGTERM; its exit code."""
    from smartbox import runtime

    from . import factories

    if args.command == "receive":
        from producers.receiver import intake_key

        trust = load_trust(settings.trusts_dir, args.trust)
        # the receiver's ids are keyed by its own key, which a pseudonym-key rotation leaves
        # alone: a study re-sent after a rotation is still found in the ledger
        key = intake_key.load(settings.spool_dir / trust.code, RegionalKey.from_env)
        rt = runtime.start(f"receiver-{trust.code}", settings, metrics_port=None)
        # the metrics port is bound first (one in use stops us before anything opens) but
        # served after the DICOM port: /healthz answering means the receiver takes C-STORE
        server = None
        if args.metrics_port is not None:
            server = runtime.bind_metrics(rt, args.metrics_port, args.metrics_host)
        service = factories.receiver(
            factories.Wiring.from_settings(settings, rt.bus, rt.store, key=key), trust
        )
        freeze_startup_objects()
        service.start(rt.stop)
        if server is not None:
            server.start()
            server.health.add_check("relay", lambda: service.relay.healthy)
            server.health.add_check("scp", service.scp_alive)
        rt.stop.wait()
        service.stop()
        if server:
            server.stop()
        return 0

    if args.command == "anonymise":
        rt = runtime.start(
            "anonymiser",
            settings,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
        )
        rt.bus.declare()
        # key, trust files and policy builder as check-config checked them (require above)
        wiring = factories.Wiring.from_settings(settings, rt.bus, rt.store)
        anonymiser = factories.anonymiser(wiring)
        freeze_startup_objects()
        rt.bus.consume(
            "anonymiser",
            anonymiser.handle,
            stop=rt.stop,
            prefetch=args.prefetch or settings.prefetch,
        )
        return 0

    if args.command == "export":
        from smartbox.app.export_cli import export_command

        return export_command(args, settings)

    if args.command == "ingest":
        rt = runtime.start(
            "ingest", settings, metrics_port=args.metrics_port, metrics_host=args.metrics_host
        )
        rt.bus.declare()
        from smartbox.signing import Verifier

        wiring = factories.Wiring.from_settings(settings, rt.bus, rt.store, rt.national_store())
        ingest = factories.ingest(
            wiring, verifier=Verifier.from_env(), archive_bucket=args.archive_bucket
        )
        rt.bus.consume("national.ingest", ingest.handle, stop=rt.stop, prefetch=settings.prefetch)
        return 0

    raise AssertionError(args.command)
