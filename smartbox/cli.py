"""The ``smartbox`` command: one subcommand per process, plus tools for operators.

Exit codes: 0 success; 1 the work failed (see the message); 2 bad usage or configuration;
3 ``deidentify --strict`` held something back.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .errors import ConfigError, TransientError

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("smartbox")


def _metrics_port(parser: argparse.ArgumentParser, default: int | None) -> None:
    env = os.environ.get("SMARTBOX_METRICS_PORT")
    if env is not None and env.isdigit():
        default = int(env)
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=default,
        help="port for /metrics, /healthz, /readyz (0: any free port; default %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartbox",
        description="Regional DICOM hub: receive studies from trusts, de-identify them (DICOM "
        "PS3.15 Annex E), stage them and export them to the national database. "
        "Configuration: trust files in $SMARTBOX_TRUSTS_DIR, everything else from "
        "SMARTBOX_* environment variables (see docs/operations.md).",
    )
    parser.add_argument("--version", action="version", version=f"smartbox {__version__}")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("receive", help="run one trust's DICOM receiver (C-STORE SCP + relay)")
    p.add_argument(
        "--trust", required=True, help="trust code: reads $SMARTBOX_TRUSTS_DIR/CODE.toml"
    )
    _metrics_port(p, 9110)

    p = sub.add_parser("anonymise", help="de-identify arrived studies into staging")
    p.add_argument("--prefetch", type=int, default=None, help="messages in flight (default env)")
    _metrics_port(p, 9101)

    p = sub.add_parser("export", help="record staged studies; export them on the schedule")
    p.add_argument("--now", action="store_true", help="run one export pass now and exit")
    p.add_argument(
        "--no-consume",
        action="store_true",
        help="do not consume study.staged (only run the schedule)",
    )
    _metrics_port(p, 9102)

    p = sub.add_parser("ingest", help="national reference consumer of the export queue")
    p.add_argument("--archive-bucket", default="national-archive")
    _metrics_port(p, 9103)

    p = sub.add_parser("demo", help="the whole pipeline on this machine, nothing to install")
    p.add_argument("--studies", type=int, default=2, help="studies per trust (default 2)")
    p.add_argument("--series", type=int, default=2, help="series per study (default 2)")
    p.add_argument("--instances", type=int, default=3, help="instances per series (default 3)")
    p.add_argument("--workdir", default=None, help="keep spool and stores here (default: temp)")
    _metrics_port(p, 0)

    p = sub.add_parser(
        "deidentify",
        help="de-identify files exactly as the pipeline would (for governance leads)",
        add_help=False,
    )
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser("check-config", help="validate every trust file and the environment")

    p = sub.add_parser("dlq", help="list or replay dead-lettered messages of a stage")
    p.add_argument("action", choices=["list", "show", "replay"])
    p.add_argument("role", choices=["anonymiser", "exporter", "national.ingest", "export.receipts"])
    p.add_argument("--id", dest="message_id", help="only this message id (show, replay)")
    p.add_argument("--limit", type=int, default=100)

    p = sub.add_parser(
        "purge-quarantine", help="delete processed identifiable originals past retention"
    )
    p.add_argument("--older-than-days", type=float, default=30.0, help="default %(default)s")
    p.add_argument("--dry-run", action="store_true", help="report, delete nothing")

    p = sub.add_parser("held", help="list instances held back from export, with reasons")
    p.add_argument("--trust", help="only this trust")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["deidentify"]:
        from consumers.deid.cli import main as deid_main

        return deid_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    from . import logs

    default_level = "WARNING" if args.command == "demo" else None
    logs.setup(args.command, args.log_level or default_level)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"smartbox: error: {exc}", file=sys.stderr)
        return 2
    except TransientError as exc:
        print(f"smartbox: unavailable: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from .config import Settings, TrustRegistry, load_all_trusts, load_trust
    from .keys import RegionalKey

    if args.command == "demo":
        from .demo import run_demo

        return run_demo(
            studies=args.studies,
            series=args.series,
            per_series=args.instances,
            workdir=args.workdir,
            metrics_port=args.metrics_port,
        )

    settings = Settings.from_env()
    if args.command == "check-config":
        all_trusts = load_all_trusts(settings.trusts_dir)
        RegionalKey.from_env()
        for t in all_trusts.values():
            print(f"{t.code}: {t.name}: AE {t.ae_title} port {t.port} ({t.source_file})")
        print(f"{len(all_trusts)} trust(s) valid; key present")
        return 0

    if args.command == "dlq":
        return _dlq(args, settings)
    if args.command == "held":
        return _held(args, settings)
    if args.command == "purge-quarantine":
        from .retention import purge_quarantine
        from .s3 import S3Store

        report = purge_quarantine(
            S3Store(settings.s3),
            quarantine=settings.quarantine_bucket,
            staging=settings.staging_bucket,
            older_than_seconds=args.older_than_days * 86400,
            dry_run=args.dry_run,
        )
        verb = "would purge" if args.dry_run else "purged"
        print(f"{verb} {report.purged_batches} batches ({report.purged_objects} objects)")
        for batch_key in report.unprocessed_old:
            print(f"not processed, past retention (kept): {batch_key}", file=sys.stderr)
        return 0

    from . import runtime

    if args.command == "receive":
        trust = load_trust(settings.trusts_dir, args.trust)
        key = RegionalKey.from_env()
        # metrics after the DICOM port: /healthz answering means the receiver takes C-STORE
        rt = runtime.start(f"receiver-{trust.code}", settings, metrics_port=None)
        from producers.receiver import ReceiverService

        service = ReceiverService(
            trust,
            spool_dir=settings.spool_dir,
            store=rt.store,
            bus=rt.bus,
            key=key,
            quarantine_bucket=settings.quarantine_bucket,
        )
        service.start(rt.stop)
        server = None
        if args.metrics_port is not None:
            server = runtime.serve_metrics(rt, args.metrics_port)
            server.health.add_check("relay", lambda: service.relay.healthy)
            server.health.add_check("scp", service.scp_alive)
        rt.stop.wait()
        service.stop()
        if server:
            server.stop()
        return 0

    if args.command == "anonymise":
        from consumers.anonymiser import Anonymiser, Buckets

        load_all_trusts(settings.trusts_dir)  # fail fast on any invalid trust file
        trusts = TrustRegistry(settings.trusts_dir, default_options=settings.deid_options)
        key = RegionalKey.from_env()
        rt = runtime.start("anonymiser", settings, metrics_port=args.metrics_port)
        rt.bus.declare()
        anonymiser = Anonymiser(
            rt.store,
            rt.bus,
            key,
            trusts,
            Buckets(settings.quarantine_bucket, settings.staging_bucket),
        )
        rt.bus.consume(
            "anonymiser",
            anonymiser.handle,
            stop=rt.stop,
            prefetch=args.prefetch or settings.prefetch,
        )
        return 0

    if args.command == "export":
        from consumers.exporter import Exporter, Schedule, run_scheduler

        schedule = Schedule(settings.export_schedule, settings.export_timezone)
        rt = runtime.start(
            "exporter", settings, metrics_port=None if args.now else args.metrics_port
        )
        exporter = Exporter(
            rt.store,
            rt.national_store(),
            rt.bus,
            staging_bucket=settings.staging_bucket,
            national_bucket=settings.national_bucket,
        )
        if args.now:
            summary = exporter.export_pass()
            for code in sorted(summary.instances):
                print(
                    f"{code}: batch {summary.batches.get(code, '-')}: "
                    f"{summary.studies[code]} studies, {summary.instances[code]} instances"
                )
            print(f"exported {summary.total_instances} instances")
            if summary.failed_trusts:
                print(
                    f"failed (still pending): {', '.join(summary.failed_trusts)}", file=sys.stderr
                )
                return 1
            return 0
        rt.bus.declare()
        rt.store.ensure_bucket(settings.staging_bucket)
        exporter.restore_state()
        threading.Thread(
            target=run_scheduler, args=(exporter, schedule, rt.stop), daemon=True
        ).start()
        threading.Thread(
            target=rt.bus.consume,
            args=("export.receipts", exporter.handle_receipt),
            kwargs={"stop": rt.stop, "prefetch": 1},
            daemon=True,
        ).start()
        if args.no_consume:
            rt.stop.wait()
        else:
            rt.bus.consume("exporter", exporter.handle, stop=rt.stop, prefetch=settings.prefetch)
        return 0

    if args.command == "ingest":
        from consumers.ingest import NationalIngest

        rt = runtime.start("ingest", settings, metrics_port=args.metrics_port)
        rt.bus.declare()
        ingest = NationalIngest(rt.national_store(), rt.bus, archive_bucket=args.archive_bucket)
        rt.bus.consume("national.ingest", ingest.handle, stop=rt.stop, prefetch=settings.prefetch)
        return 0

    raise AssertionError(args.command)


def _dlq(args: argparse.Namespace, settings: Settings) -> int:  # noqa: F821
    import json

    from .dlq import DeadLetters
    from .topology import Topology

    dlq = DeadLetters(settings.amqp_url, Topology(settings.namespace), args.role)
    if args.action == "replay":
        n = dlq.replay(args.message_id, args.limit)
        print(f"replayed {n} message(s) from {dlq.queue}")
        return 0 if n or args.message_id is None else 1
    letters = dlq.list(args.limit)
    if args.message_id:
        letters = [x for x in letters if x.message_id == args.message_id]
        if not letters:
            print(f"no message {args.message_id} in {dlq.queue}", file=sys.stderr)
            return 1
    if args.action == "show":
        for x in letters:
            print(json.dumps({**x.summary(), "message": json.loads(x.body)}, indent=2))
        return 0
    print(f"{len(letters)} message(s) in {dlq.queue}")
    for x in letters:
        print(f"{x.message_id}  {x.schema or '?'}  {x.trust or '?'}  {x.reason}")
    return 0


def _held(args: argparse.Namespace, settings: Settings) -> int:  # noqa: F821
    from collections import Counter

    from .s3 import S3Store
    from .store import get_json

    store = S3Store(settings.s3)
    reasons: Counter[tuple[str, str]] = Counter()
    prefix = f"{args.trust}/" if args.trust else ""
    for key in store.list_keys(settings.staging_bucket, prefix):
        if "/manifest-" not in key:
            continue
        manifest = get_json(store, settings.staging_bucket, key)
        for item in manifest.get("held_back", []):
            reasons[(manifest["trust"], item["reason"])] += 1
            print(
                f"{manifest['trust']}  {manifest['study_uid']}  {item['source']}  {item['reason']}"
            )
    for (trust, reason), n in sorted(reasons.items()):
        print(f"total {trust} {reason}: {n}")
    if not reasons:
        print("nothing held back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
