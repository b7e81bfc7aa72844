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

from smartbox import __version__
from smartbox.errors import ConfigError, TransientError

if TYPE_CHECKING:
    pass

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

    from . import clinical_cli, dlq_cli, probe, report, status, trust_add

    clinical_cli.add_parser(sub)
    dlq_cli.add_parser(sub)
    report.add_parser(sub)
    trust_add.add_parser(sub)
    status.add_parser(sub)
    probe.add_parser(sub)
    from smartbox.app import cohort_cli

    cohort_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["deidentify"]:
        from smartbox.app.deidentify_cli import main as deid_main

        return deid_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    from smartbox import logs

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
        trust=getattr(args, "trust", None) if args.command in ("receive", "cohort") else None,
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
    from smartbox.validate import log_level

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
    from smartbox.settings import Settings

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
        from . import clinical_cli

        return clinical_cli.main(args, settings)
    if args.command == "dlq":
        from . import dlq_cli

        return dlq_cli.main(args, settings)
    if args.command == "rotate-key":
        from consumers.rotation import rotate_key_command

        return rotate_key_command(settings)
    if args.command in ("reconcile", "withdraw"):
        from smartbox.app.export_cli import reconcile_command, withdraw_command

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
    if args.command == "cohort":
        from smartbox.app import cohort_cli

        return cohort_cli.main(args, settings)
    if args.command in ("purge-quarantine", "held"):
        from . import maintenance

        return maintenance.main(args, settings)
    from . import daemons

    return daemons.run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
