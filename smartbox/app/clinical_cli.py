"""``smartbox clinical submit|stage``: the clinical data intake's two commands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from smartbox.settings import Settings


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "clinical",
        help="clinical data intake: submit a trust's clinical records; stage them for export",
        description="Clinical records (NCCID fields), pseudonymised with the images' key and "
        "date shift, exported in the same batch (docs/clinical.md).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = actions.add_parser(
        "submit",
        help="validate a CSV or JSON file, pseudonymise its rows, publish clinical.arrived",
        description="Every row is checked; rows with problems are held back and listed "
        "(file, row, field, reason), the rest published. Exit 0: all accepted; 3: some row "
        "held back; 2: a mistake in the command, file or configuration; 1: broker unavailable.",
    )
    s.add_argument("--trust", required=True, help="the submitting trust's code (trusts/CODE.toml)")
    s.add_argument("file", metavar="FILE", help="FILE.csv (header row) or FILE.json (a list)")
    s.add_argument("--dry-run", action="store_true", help="check and report only: publish nothing")
    st = actions.add_parser(
        "stage", help="run the clinical stage: stage clinical.arrived records for export"
    )
    from .cli import _metrics_port

    _metrics_port(st, 9105)


def main(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "submit":
        return _submit(args, settings)
    return _stage(args, settings)


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.clinical.submit import run
    from consumers.deid.policy import PolicyBuilder
    from smartbox.keys import RegionalKey
    from smartbox.rabbit import RabbitBus
    from smartbox.topology import Topology
    from smartbox.trusts import load_trust

    trust = load_trust(settings.trusts_dir, args.trust)
    key = RegionalKey.from_env()
    policies = PolicyBuilder.from_env()

    def bus() -> RabbitBus:
        # a command, not a daemon: a refused connection is one line (exit 1), and pika would
        # log it with a traceback first (as smartbox status silences it)
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        return RabbitBus(settings.amqp_url, Topology(settings.namespace))

    return run(
        Path(args.file),
        trust,
        key=key,
        policies=policies,
        bus=None if args.dry_run else bus,
        out=sys.stdout,
    )


def _stage(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.clinical.fields import reasons
    from consumers.clinical.stage import ClinicalStage
    from smartbox import metrics, runtime

    from . import preflight

    rt = runtime.start(
        "clinical", settings, metrics_port=args.metrics_port, metrics_host=args.metrics_host
    )
    metrics.init_series(
        "clinical",
        preflight.trust_codes(settings.trusts_dir),
        {metrics.CLINICAL_HELD_BACK: reasons()},
    )
    rt.bus.declare()
    stage = ClinicalStage(rt.store, settings.staging_bucket)
    rt.bus.consume("clinical", stage.handle, stop=rt.stop, prefetch=settings.prefetch)
    return 0
