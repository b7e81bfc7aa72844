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
    s.add_argument(
        "--cohort",
        action="store_true",
        help="also queue a cohort: every patient with a swab result, their chest imaging from "
        "[retrieve] swab_days_before the first swab to swab_days_after the last (smartbox "
        "cohort run retrieves it; docs/retrieve.md)",
    )
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
    if args.cohort:
        from producers.retrieve.config import require

        require(trust)  # before anything is published: a trust with no archive is a mistake

    def bus() -> RabbitBus:
        # a command, not a daemon: a refused connection is one line (exit 1), and pika would
        # log it with a traceback first (as smartbox status silences it)
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        return RabbitBus(settings.amqp_url, Topology(settings.namespace))

    code = run(
        Path(args.file),
        trust,
        key=key,
        policies=policies,
        bus=None if args.dry_run else bus,
        out=sys.stdout,
    )
    if args.cohort and not args.dry_run and code in (0, 3):
        cohort_id, n = cohort_from_clinical(settings, trust, Path(args.file), key)
        print(f"cohort {cohort_id}: {n} patients with a swab result queued for retrieval")
    return code


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


def cohort_from_clinical(settings: Settings, trust: Any, path: Path, key: Any) -> tuple[str, int]:
    """Queue a cohort of the submission's patients with a swab result (valid rows only): one
    cohort row per patient, from ``swab_days_before`` their first swab to ``swab_days_after``
    their last, with the trust's chest filters; (cohort id, patients)."""
    from datetime import timedelta

    from consumers.clinical.cohort import swab_patients
    from producers.retrieve import api
    from producers.retrieve.config import require
    from producers.retrieve.rows import CohortRow

    config = require(trust)
    before, after = timedelta(days=config.swab_days_before), timedelta(days=config.swab_days_after)
    rows = [
        CohortRow(
            row=p.row,
            nhs_number=p.nhs_number,
            patient_id=None if p.nhs_number else p.local_patient_id,
            date_from=p.swab_dates[0] - before,
            date_to=p.swab_dates[-1] + after,
        )
        for p in swab_patients(path)
    ]
    return api.submit(settings, trust, rows, f"clinical:{path.name}", key=key), len(rows)
