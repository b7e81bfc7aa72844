"""The ``smartbox`` command: one subcommand per process, plus tools for operators.

Exit codes: 0 success; 1 the work failed (see the message); 2 bad usage or configuration;
3 ``deidentify --strict`` or ``clinical submit`` held something back; 4 ``export --now`` found
another pass holding the export lease (nothing exported); 5 ``reconcile`` found studies
outstanding past their age.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
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
    parser.add_argument(
        "--metrics-host",
        # loopback unless asked: the endpoints are unauthenticated (docs/operations.md)
        default=os.environ.get("SMARTBOX_METRICS_HOST", "").strip() or "127.0.0.1",
        help="address /metrics, /healthz, /readyz listen on (0.0.0.0: every interface; "
        "default %(default)s, or SMARTBOX_METRICS_HOST)",
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
    parser.add_argument(
        "--log-level",
        default=None,
        help="DEBUG, INFO (default), WARNING, ERROR, CRITICAL (or SMARTBOX_LOG_LEVEL)",
    )
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
    p.add_argument(
        "--workdir",
        default=None,
        help="keep spool and stores here (default: a temporary folder, removed at the end)",
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="after the table, keep the receivers and /metrics serving until Ctrl-C",
    )
    p.add_argument(
        "--trusts",
        default=None,
        help="folder of trust files (default: SMARTBOX_TRUSTS_DIR, else the repository's trusts/)",
    )
    _metrics_port(p, 0)

    p = sub.add_parser(
        "deidentify",
        help="de-identify files exactly as the pipeline would (for governance leads)",
        add_help=False,
    )
    p.add_argument("args", nargs=argparse.REMAINDER)

    p = sub.add_parser(
        "check-config",
        help="validate the trust files and the environment exactly as the processes do at start",
    )
    p.add_argument(
        "--role",
        dest="roles",
        action="append",
        choices=["receive", "anonymise", "export", "ingest"],
        help="check what this process needs (repeatable; default: receive, anonymise, export)",
    )

    p = sub.add_parser(
        "purge-quarantine",
        help="delete originals of nationally acknowledged studies past the grace period",
    )
    p.add_argument("--older-than-days", type=float, default=30.0, help="default %(default)s")
    p.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    p.add_argument(
        "--staging-grace-days",
        type=float,
        default=None,
        help="also delete staged copies this many days after national acknowledgement",
    )

    p = sub.add_parser(
        "reconcile", help="expected, delivered and outstanding studies per trust and day"
    )
    p.add_argument("--trust", required=True, help="trust code")
    p.add_argument("--from", dest="date_from", help="first day, YYYY-MM-DD (default: 30 days ago)")
    p.add_argument("--to", dest="date_to", help="last day, YYYY-MM-DD (default: today, UTC)")

    p = sub.add_parser("withdraw", help="withdraw a patient's data (national data opt-out)")
    p.add_argument("--trust", required=True, help="the trust the request came through")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--nhs-number", help="the patient's NHS number")
    who.add_argument("--patient-id", help="the patient's ID at the trust")
    who.add_argument("--accession", help="an accession number of one of the patient's studies")

    sub.add_parser(
        "rotate-key",
        help="after changing the pseudonym key (and its version): map old pseudonyms to new "
        "ones and send the signed map in the next export batch (docs/deidentification.md)",
    )

    p = sub.add_parser("held", help="list instances held back from export, with reasons")
    p.add_argument("--trust", help="only this trust")

    from consumers.clinical import cli as clinical_cli

    from . import dlq_cli, probe, report, status, trust_add

    clinical_cli.add_parser(sub)
    dlq_cli.add_parser(sub)
    report.add_parser(sub)
    trust_add.add_parser(sub)
    status.add_parser(sub)
    probe.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["deidentify"]:
        from consumers.deid.cli import main as deid_main

        return deid_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    from . import logs

    try:
        level = _log_level(args.log_level)
        logs.log_format()  # SMARTBOX_LOG_FORMAT checked: one line and exit 2, as a bad level
    except ConfigError as exc:
        return _config_error(exc)
    default_level = "WARNING" if args.command == "demo" else None
    # the daemons log as their role, a receiver with its trust on every line
    role = {"receive": "receiver", "anonymise": "anonymiser", "export": "exporter"}
    logs.setup(
        role.get(args.command, args.command),
        level or default_level,
        trust=getattr(args, "trust", None) if args.command == "receive" else None,
    )
    try:
        return _dispatch(args)
    except ConfigError as exc:
        return _config_error(exc)
    except TransientError as exc:
        print(f"smartbox: unavailable: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _config_error(exc: ConfigError) -> int:
    """Exit 2 with one line per problem, naming what to fix (never a traceback)."""
    for line in str(exc).splitlines() or ["invalid configuration"]:
        print(f"smartbox: error: {line}", file=sys.stderr)
    return 2


def _log_level(flag: str | None) -> str | None:
    """The ``--log-level`` asked for (None: the default); it and SMARTBOX_LOG_LEVEL checked."""
    from .validate import log_level

    env = os.environ.get("SMARTBOX_LOG_LEVEL")
    if env is not None:
        log_level("environment: SMARTBOX_LOG_LEVEL", env)
    return log_level("--log-level", flag) if flag is not None else None


def _check_config(args: argparse.Namespace) -> int:
    from . import preflight

    report = preflight.check(args.roles or preflight.HUB_ROLES, require_trusts=True)
    if report.problems:
        return _config_error(ConfigError("\n".join(report.problems)))
    for t in report.trusts.values():
        print(f"{t.code}: {t.name}: AE {t.ae_title} port {t.port} ({t.source_file})")
    roles = ", ".join(report.checked)
    print(f"{len(report.trusts)} trust(s) valid; settings and keys valid for {roles}")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    from .config import Settings, load_trust
    from .keys import RegionalKey

    if args.command == "demo":
        from .demo import run_demo

        return run_demo(
            studies=args.studies,
            series=args.series,
            per_series=args.instances,
            workdir=args.workdir,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            keep_running=args.keep_running,
            trusts_dir=args.trusts,
        )

    if args.command == "check-config":
        return _check_config(args)
    from . import preflight

    if args.command in preflight.ROLES:
        # what check-config checks, checked the same way: every problem, one line each
        settings = preflight.require(args.command, trust=getattr(args, "trust", None))
        preflight.init_series(args.command, settings, trust=getattr(args, "trust", None))
    else:
        settings = Settings.from_env()

    if args.command == "clinical":
        from consumers.clinical import cli as clinical_cli

        return clinical_cli.main(args, settings)
    if args.command == "dlq":
        from . import dlq_cli

        return dlq_cli.main(args, settings)
    if args.command == "held":
        return _held(args, settings)
    if args.command == "rotate-key":
        from consumers.rotation import rotate_key_command

        return rotate_key_command(settings)
    if args.command in ("reconcile", "withdraw"):
        from consumers.export_cli import reconcile_command, withdraw_command

        command = reconcile_command if args.command == "reconcile" else withdraw_command
        return command(args, settings)
    if args.command == "report":
        from . import report as report_command

        return report_command.main(args, settings)
    if args.command == "trust":
        from . import trust_add

        return trust_add.main(args, settings)
    if args.command == "status":
        from . import status

        return status.main(args, settings)
    if args.command == "probe":
        from . import probe

        return probe.main(args, settings)
    if args.command == "purge-quarantine":
        from consumers.export_policy import ExportPolicy

        from .retention import purge_quarantine
        from .s3 import S3Store

        report = purge_quarantine(
            S3Store(settings.s3),
            quarantine=settings.quarantine_bucket,
            staging=settings.staging_bucket,
            older_than_seconds=args.older_than_days * 86400,
            alert_seconds=ExportPolicy.from_env().quarantine_alert_seconds,  # as the alert's
            dry_run=args.dry_run,
        )
        verb = "would purge" if args.dry_run else "purged"
        print(f"{verb} {report.purged_batches} batches ({report.purged_objects} objects)")
        for batch_key in report.unprocessed_old:
            print(f"not processed, past retention (kept): {batch_key}", file=sys.stderr)
        if args.staging_grace_days is not None and not args.dry_run:
            from .retention import purge_staging

            n = purge_staging(
                S3Store(settings.s3),
                staging=settings.staging_bucket,
                grace_seconds=args.staging_grace_days * 86400,
            )
            print(f"purged {n} staged objects of studies acknowledged nationally")
        return 0

    from . import runtime

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
        from consumers.anonymiser import Anonymiser

        rt = runtime.start(
            "anonymiser",
            settings,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
        )
        rt.bus.declare()
        # key, trust files and policy builder as check-config checked them (require above)
        anonymiser = Anonymiser.from_env(rt.store, rt.bus, settings)
        rt.bus.consume(
            "anonymiser",
            anonymiser.handle,
            stop=rt.stop,
            prefetch=args.prefetch or settings.prefetch,
        )
        return 0

    if args.command == "export":
        from consumers.export_cli import export_command

        return export_command(args, settings)

    if args.command == "ingest":
        from consumers.ingest import NationalIngest

        rt = runtime.start(
            "ingest", settings, metrics_port=args.metrics_port, metrics_host=args.metrics_host
        )
        rt.bus.declare()
        from .signing import Verifier

        ingest = NationalIngest(
            rt.national_store(),
            rt.bus,
            verifier=Verifier.from_env(),
            archive_bucket=args.archive_bucket,
        )
        rt.bus.consume("national.ingest", ingest.handle, stop=rt.stop, prefetch=settings.prefetch)
        return 0

    raise AssertionError(args.command)


def _held(args: argparse.Namespace, settings: Settings) -> int:  # noqa: F821
    from collections import Counter

    from . import layout
    from .s3 import S3Store
    from .store import get_json

    store = S3Store(settings.s3)
    reasons: Counter[tuple[str, str]] = Counter()
    prefix = f"{args.trust}/" if args.trust else ""
    for key in store.list_keys(settings.staging_bucket, prefix):
        if not layout.is_study_manifest_key(key):
            continue
        manifest = get_json(store, settings.staging_bucket, key)
        for item in manifest.get("held_back", []):
            reasons[(manifest["trust"], item["reason"])] += 1
            detail = f" ({item['detail']})" if item.get("detail") else ""
            print(
                f"{manifest['trust']}  {manifest['study_uid']}  {item['source']}  "
                f"{item['reason']}{detail}"
            )
    for (trust, reason), n in sorted(reasons.items()):
        print(f"total {trust} {reason}: {n}")
    if not reasons:
        print("nothing held back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
