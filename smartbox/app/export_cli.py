"""``smartbox export``, ``smartbox reconcile`` and ``smartbox withdraw``: wiring only."""

from __future__ import annotations

import argparse
import sys
import threading
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from smartbox.errors import ConfigError, TransientError

if TYPE_CHECKING:
    from consumers.export_policy import ExportPolicy
    from smartbox.settings import Settings


class _Bar:
    """A progress bar on a terminal (studies copied); silent when stderr is not one."""

    def __init__(self) -> None:
        self.done = 0
        self.tty = sys.stderr.isatty()

    def __call__(self, n: int) -> None:
        self.done += n
        if self.tty:
            filled = min(self.done // 5, 40)
            print(f"\rexport [{'#' * filled:<40}] {self.done} studies", end="", file=sys.stderr)

    def close(self) -> None:
        if self.tty and self.done:
            print(file=sys.stderr)


def export_command(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.export_policy import ExportPolicy
    from consumers.exporter import Schedule, run_scheduler
    from smartbox import runtime
    from smartbox.signing import Signer

    from . import factories

    schedule = Schedule(settings.export_schedule, settings.export_timezone)
    signer = Signer.from_env()
    policy = ExportPolicy.from_env()
    rt = runtime.start(
        "exporter",
        settings,
        metrics_port=None if args.now else args.metrics_port,
        **({"metrics_host": args.metrics_host} if getattr(args, "metrics_host", None) else {}),
    )
    wiring = factories.Wiring.from_settings(settings, rt.bus, rt.store, rt.national_store())
    exporter = factories.exporter(wiring, signer=signer, policy=policy)
    if args.now:
        rt.store.ensure_bucket(settings.staging_bucket)
        bar = _Bar()
        summary = exporter.export_pass(progress=bar)
        bar.close()
        if summary.lease_holder:
            print(f"another export pass holds the lease ({summary.lease_holder}): nothing exported")
            return 4
        for code in sorted(summary.instances):
            ids = ", ".join(summary.batches.get(code, [])) or "-"
            studies, instances = summary.studies[code], summary.instances[code]
            print(f"{code}: batches {ids}: {studies} studies, {instances} instances")
        for code, n in sorted(summary.set_aside.items()):
            print(
                f"{code}: {n} studies set aside (bad object; see smartbox reconcile)",
                file=sys.stderr,
            )
        print(f"exported {summary.total_instances} instances")
        for code, n in sorted(summary.clinical.items()):
            print(f"{code}: {n} clinical records")
        if summary.window_closed:
            print("the export window closed: the rest waits for the next window", file=sys.stderr)
        if summary.failed_trusts:
            print(f"failed (still queued): {', '.join(summary.failed_trusts)}", file=sys.stderr)
            return 1
        return 0
    rt.bus.declare()
    rt.store.ensure_bucket(settings.staging_bucket)
    exporter.restore_state()
    threading.Thread(target=run_scheduler, args=(exporter, schedule, rt.stop), daemon=True).start()
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


def _day(raw: str | None, default: date, flag: str) -> date:
    if raw is None:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"{flag}: expected YYYY-MM-DD") from None


def reconcile_command(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.export_policy import ExportPolicy
    from consumers.export_state import ExportState
    from consumers.reconcile import reconcile, render
    from smartbox.s3 import S3Store

    policy = ExportPolicy.from_env()
    today = datetime.now(UTC).date()
    last = _day(args.date_to, today, "--to")
    first = _day(args.date_from, last - timedelta(days=30), "--from")
    state = ExportState(S3Store(settings.s3), settings.staging_bucket)
    lines = reconcile(
        state, args.trust, first, last, max_age_seconds=policy.outstanding_max_age_seconds
    )
    print(render(lines))
    overdue = sum(ln.overdue for ln in lines)
    outstanding = sum(ln.outstanding for ln in lines)
    hours = policy.outstanding_max_age_seconds / 3600
    print(f"{args.trust}: {outstanding} outstanding, {overdue} past {hours:g} h")
    clinical = _reconcile_clinical(args.trust, settings, first, last, policy)
    return 5 if overdue or clinical else 0


def _reconcile_clinical(
    trust: str, settings: Settings, first: date, last: date, policy: ExportPolicy
) -> int:
    """Clinical records staged on ``first..last``: staged = exported + pending (+ withdrawn
    before export), printed; the number of problems (discrepancies, overdue records)."""
    from consumers.clinical.counts import count
    from smartbox.s3 import S3Store

    since = datetime.combine(first, datetime.min.time(), UTC).timestamp()
    until = datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC).timestamp()
    max_age = policy.outstanding_max_age_seconds
    store = S3Store(settings.s3)
    try:
        c = count(
            store,
            settings.staging_bucket,
            trust,
            since=since,
            until=until,
            max_age_seconds=max_age,
            check=True,
        )
    except TransientError:
        if store.ping():
            return 0  # no staging bucket: nothing staged
        raise
    if not (c.staged or c.rows):
        return 0
    print(
        f"{trust}: clinical records: {c.staged} staged = {c.exported} exported + {c.pending} "
        f"pending + {c.withdrawn_before_export} withdrawn before export; "
        f"{c.acknowledged} acknowledged, {c.in_flight} in flight, {c.failed} failed, "
        f"{c.overdue} past {max_age / 3600:g} h; rows {c.accepted} accepted, "
        f"{c.held_back} held back at submission"
    )
    for line in c.problems:
        print(f"DISCREPANCY {line}")
    return len(c.problems) + c.overdue


def withdraw_command(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.withdraw import withdraw
    from consumers.withdraw_resolve import resolve_patient
    from smartbox.keys import RegionalKey
    from smartbox.s3 import S3Store
    from smartbox.trusts import load_trust

    trust = load_trust(settings.trusts_dir, args.trust)
    key = RegionalKey.from_env()
    store = S3Store(settings.s3)
    patients = resolve_patient(
        store,
        settings.quarantine_bucket,
        trust,
        key,
        nhs_number=args.nhs_number,
        patient_id=args.patient_id,
        accession=args.accession,
    )
    if not patients:
        print("no study of that accession number is held in quarantine", file=sys.stderr)
        return 1
    for patient in patients:
        report = withdraw(store, settings.staging_bucket, trust.code, patient)
        print(
            f"withdrawn: {len(report.removed_unexported)} study versions removed before export, "
            f"{len(report.queued_for_national)} withdrawals queued for the national side; "
            "later studies of this patient will be held back"
        )
    return 0
