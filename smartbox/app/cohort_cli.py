"""``smartbox cohort submit|run|status|report``: cohort retrieval for operators.

* ``submit --trust CODE FILE.csv``: validate every row (file, row, field for each problem);
  exit 2 with nothing stored if any row is bad, unless ``--accept-valid`` (then the good rows
  are stored and the bad ones still reported); prints the cohort id.
* ``run --trust CODE``: the long-running cohort process (``--ignore-window`` for an operator
  who must run outside the off-peak window; ``--once``: exit when no work is left).
* ``status ID`` and ``report ID``: progress, and per patient pseudonym what was found,
  retrieved, staged and exported. No NHS number, name or original UID is ever printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from smartbox.errors import ConfigError
from smartbox.settings import Settings
from smartbox.trusts import TrustConfig, load_trust

log = logging.getLogger("producers.retrieve")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cohort", help="retrieve a cohort's studies from a trust's archive")
    csub = p.add_subparsers(dest="cohort_command", metavar="ACTION", required=True)
    s = csub.add_parser("submit", help="validate a cohort file and queue it for retrieval")
    s.add_argument("--trust", required=True, help="trust code (its [retrieve] table)")
    s.add_argument(
        "file",
        help="CSV: nhs_number|patient_id, date_from, date_to[, modalities, "
        "body_parts] (docs/retrieve.md)",
    )
    s.add_argument(
        "--accept-valid",
        action="store_true",
        help="store the valid rows even if some are bad (the bad ones are still reported)",
    )
    r = csub.add_parser("run", help="the cohort process of one trust (off-peak, rate-limited)")
    r.add_argument("--trust", required=True, help="trust code")
    r.add_argument(
        "--ignore-window",
        action="store_true",
        help="work outside the off-peak window (the PACS manager must agree)",
    )
    r.add_argument("--once", action="store_true", help="exit when no cohort has work left")
    # the deployments set the port and address in the environment, as for every daemon
    env_port = os.environ.get("SMARTBOX_METRICS_PORT", "").strip()
    r.add_argument(
        "--metrics-port",
        type=int,
        default=int(env_port) if env_port.isdigit() else None,
        help="serve /metrics, /healthz, /readyz here (default: SMARTBOX_METRICS_PORT, else none)",
    )
    r.add_argument(
        "--metrics-host",
        default=os.environ.get("SMARTBOX_METRICS_HOST", "").strip() or "127.0.0.1",
        help="default %(default)s, or SMARTBOX_METRICS_HOST",
    )
    for name, what in (("status", "progress of a cohort"), ("report", "what a cohort found")):
        c = csub.add_parser(name, help=what)
        c.add_argument("--trust", required=True, help="trust code")
        c.add_argument("cohort_id", help="the id printed by submit")
        c.add_argument("--json", action="store_true", help="machine-readable output")


def main(args: argparse.Namespace, settings: Settings) -> int:
    from producers.retrieve.config import require

    trust = load_trust(settings.trusts_dir, args.trust)
    require(trust)  # one line naming file and key, exit 2
    if args.cohort_command == "submit":
        return _submit(args, settings, trust)
    if args.cohort_command == "run":
        return _run(args, settings, trust)
    from smartbox.app.cohort_report import report_command, status_command

    command = status_command if args.cohort_command == "status" else report_command
    return command(args, settings, trust)


def _submit(args: argparse.Namespace, settings: Settings, trust: TrustConfig) -> int:
    from producers.retrieve.api import submit
    from producers.retrieve.rows import parse_file
    from smartbox.keys import RegionalKey

    key = RegionalKey.from_env()  # before anything is read: no key, nothing stored
    parsed = parse_file(Path(args.file))
    for error in parsed.errors:
        print(f"smartbox: error: {error}", file=sys.stderr)
    bad_rows = len({e.row for e in parsed.errors})
    if parsed.errors and not args.accept_valid:
        print(
            f"smartbox: {bad_rows} bad row(s), {len(parsed.rows)} valid: nothing stored "
            "(fix the file, or --accept-valid to store the valid rows)",
            file=sys.stderr,
        )
        return 2
    if not parsed.rows:
        print("smartbox: error: no valid rows: nothing stored", file=sys.stderr)
        return 2
    cohort_id = submit(
        settings, trust, parsed.rows, Path(args.file).name, rejected=bad_rows, key=key
    )
    print(cohort_id)
    print(
        f"cohort {cohort_id}: {len(parsed.rows)} row(s) stored for {trust.code}"
        + (f", {bad_rows} bad row(s) not stored" if bad_rows else ""),
        file=sys.stderr,
    )
    return 0


def _run(args: argparse.Namespace, settings: Settings, trust: TrustConfig) -> int:
    from producers.retrieve.api import open_state, pseudonymiser
    from producers.retrieve.config import require
    from producers.retrieve.received import ReceiverLedger
    from producers.retrieve.runner import CohortRunner
    from smartbox import metrics
    from smartbox.keys import RegionalKey
    from smartbox.runtime import install_stop_signals

    config = require(trust)
    names = pseudonymiser(trust, RegionalKey.from_env())
    state = open_state(settings, trust)
    from producers.retrieve.state import FAILURE_REASONS

    metrics.init_series(
        "cohort",
        [trust.code],
        {
            metrics.RETRIEVE_QUERIES: ["ok", "failed"],
            metrics.RETRIEVE_RATE_LIMIT_WAITS: ["instances", "queries"],
            metrics.RETRIEVE_FAILURES: FAILURE_REASONS,
        },
    )
    server = None
    if args.metrics_port is not None:
        server = metrics.MetricsServer(args.metrics_host, args.metrics_port).start()
    stop = threading.Event()
    install_stop_signals(stop)
    runner = CohortRunner(
        config,
        state,
        ReceiverLedger(settings.spool_dir / trust.code, trust.code),
        names.uid,
        ignore_window=args.ignore_window,
    )
    log.info("%s: cohort process started (%d archive(s))", trust.code, len(config.archives))
    try:
        runner.run(stop, once=args.once)
    finally:
        state.close()
        if server is not None:
            server.stop()
    return 0


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def cohort_or_fail(state: Any, cohort_id: str, trust: TrustConfig) -> dict:
    cohort: dict | None = state.cohort(cohort_id)
    if cohort is None:
        raise ConfigError(f"no cohort {cohort_id} for trust {trust.code}")
    return cohort
