"""``smartbox status``: per trust, what the box received, staged, exported and had acknowledged,
and how deep the queues are: read from the running deployment's own records and broker.

Sources, and what one call costs (N: objects listed, S: study versions in the window):

==================  =============================================  ============================
numbers             read from                                      requests
==================  =============================================  ============================
received,           quarantine batch manifests                     LIST of the trust's
last seen           (``smartbox.report_records.read_received``)    quarantine (N/1000), one GET
                                                                   per batch of the window only
staged, held back,  the exporter's day index and records, one day  LIST per day, one GET per
exported, acked,    at a time (``ExportState.day_records``)        study version of the window
failed              and the day's archive                          and per archive day
in de-id            received in the window, no exporter record     one GET per such batch
pending, in flight  the exporter's queue and sent markers (now)    LIST of the markers only
clinical records    submission reports and export states           LIST, one GET per report
                    (``consumers.clinical.counts``)                and per record version
queues              RabbitMQ passive declares (depth, consumers)   one per queue
==================  =============================================  ============================

Nothing lists the staging bucket's instances. The window is ``--days`` UTC days ending today;
its study versions are those the exporter recorded (staged) on those days, and
``exported``/``acknowledged`` count those of them that were sent / accepted since.
Counts only: no patient data, no UID, no object key.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from consumers.clinical.counts import ClinicalCounts
from smartbox.errors import ConfigError, NotFound, PermanentError, TransientError
from smartbox.report_records import Records, read_received
from smartbox.store import ObjectStore, get_json
from smartbox.topology import WORK_QUEUES, Topology

if TYPE_CHECKING:
    from consumers.export_state import ExportState
    from smartbox.settings import Settings

MAX_DAYS = 31


@dataclass
class TrustStatus:
    trust: str
    configured: bool  # has a trust file here (else only known from the exporter's records)
    received_studies: int = 0  # study batches announced by the receiver in the window
    received_instances: int = 0
    in_deid: int = 0  # received in the window, not yet recorded as staged
    staged_studies: int = 0  # study versions staged in the window
    staged_instances: int = 0
    held_back_instances: int = 0
    held_studies: int = 0  # every instance held back: nothing to export
    exported_studies: int = 0  # of those staged in the window: sent to the national side
    acknowledged_studies: int = 0
    failed_studies: int = 0  # set aside after their attempts (smartbox dlq list exporter)
    withdrawn_studies: int = 0
    pending_export: int = 0  # now: waiting for an export window (every day)
    in_flight: int = 0  # now: sent, no receipt yet
    last_seen: str | None = None  # newest real study batch received in the window (UTC)
    last_batch_any: str | None = None  # newest quarantine batch manifest, probes included
    probe_studies: int = 0  # smartbox probe studies in the window: in none of the counts
    skipped: int = 0  # records present but unreadable
    # submitted and staged in the window (consumers.clinical.counts); None: not read
    clinical: ClinicalCounts | None = None


@dataclass
class QueueStatus:
    role: str
    queue: str
    messages: int | None  # None: the queue does not exist (no stage has declared it)
    consumers: int | None
    dlq: str
    dlq_messages: int | None


@dataclass
class Status:
    window: tuple[str, str]
    trusts: list[TrustStatus] = field(default_factory=list)
    queues: list[QueueStatus] | None = None  # None: RabbitMQ unavailable
    broker_error: str | None = None


def window_days(days: int, today: datetime | None = None) -> list[str]:
    """The ``days`` UTC dates ending today, oldest first."""
    end = (today or datetime.now(UTC)).astimezone(UTC).date()
    return [(end - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


def _held_back(store: ObjectStore, staging: str, record: dict[str, Any]) -> int:
    """Instances held back in a study version: its record says so (since the exporter
    records it), else its staging manifest does (one GET)."""
    held = record.get("held_back")
    if isinstance(held, int):
        return held
    try:
        manifest = get_json(store, staging, str(record["manifest_key"]))
    except (NotFound, PermanentError, KeyError):
        return 0
    return len(manifest.get("held_back", [])) if isinstance(manifest, dict) else 0


def _count(it: Any) -> int:
    return sum(1 for _ in it)


def trust_status(
    store: ObjectStore,
    state: ExportState,
    *,
    code: str,
    configured: bool,
    quarantine: str,
    staging: str,
    days: list[str],
) -> TrustStatus:
    """One trust's numbers (see the module docstring for what each costs)."""
    out = TrustStatus(code, configured)
    since = datetime.fromisoformat(days[0]).replace(tzinfo=UTC).timestamp()
    records = Records()
    read_received(store, quarantine, code, ZoneInfo("UTC"), records, since=since)
    out.last_batch_any = _iso(records.last_received)
    out.skipped = records.skipped
    probes: set[str] = set()  # batch ids of probe studies (the exporter's records say so)
    received = records.received
    try:
        window: dict[str, dict[str, Any] | None] = {}
        for day in days:
            window.update(state.day_records(code, day))
        for export_id, rec in window.items():
            if not isinstance(rec, dict) or not isinstance(rec.get("instances"), int):
                out.skipped += 1
                continue
            if rec.get("synthetic"):
                probes.add(export_id)
                continue
            st = rec.get("state")
            out.staged_studies += 1
            out.staged_instances += rec["instances"]
            out.held_back_instances += _held_back(store, staging, rec)
            out.exported_studies += bool(rec.get("batches")) or st in ("sent", "acked", "failed")
            out.acknowledged_studies += st == "acked"
            out.failed_studies += st == "failed"
            out.held_studies += st == "held"
            out.withdrawn_studies += st == "withdrawn"
        # a batch received in the window whose record is on an earlier day (or none yet)
        for r in received:
            if r.batch_id in window:
                continue
            rec = state.get(code, r.batch_id)
            if rec is None:
                out.in_deid += 1
            elif rec.get("synthetic"):
                probes.add(r.batch_id)
        from smartbox.layout import CLASSES

        out.pending_export = sum(_count(state.queued(code, k)) for k in CLASSES)
        out.in_flight = _count(state.in_flight(code))
    except TransientError:
        if not store.ping():
            raise
        # the staging bucket does not exist yet: nothing was staged
        out.in_deid = len(received)
    try:
        out.clinical = clinical_counts(store, staging, code, since=since)
    except TransientError:
        if not store.ping():
            raise
    real = [r for r in received if r.batch_id not in probes]
    out.probe_studies = len(probes)
    out.received_studies = len(real)
    out.received_instances = sum(r.instances for r in real)
    out.last_seen = _iso(max((r.at for r in real), default=None))
    return out


def clinical_counts(store: ObjectStore, staging: str, code: str, *, since: float) -> ClinicalCounts:
    from consumers.clinical.counts import count

    return count(store, staging, code, since=since)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def queue_status(url: str, topology: Topology) -> list[QueueStatus]:
    """Depth and consumers of every work queue and its dead-letter queue (passive declares:
    nothing is created); TransientError if the broker cannot be reached."""
    import pika
    import pika.exceptions

    from smartbox.rabbit import _CONN_ERRORS, _close, connection_parameters

    # pika logs a refused connection with a traceback and a missing queue (its channel
    # closed) as a warning: the operator gets one line from us instead
    pika_log = logging.getLogger("pika")
    level = pika_log.level
    pika_log.setLevel(logging.CRITICAL)
    try:
        conn = pika.BlockingConnection(connection_parameters(url))
    except _CONN_ERRORS as exc:
        pika_log.setLevel(level)
        raise TransientError(f"RabbitMQ unavailable ({type(exc).__name__})") from exc

    def declare(name: str) -> tuple[int | None, int | None]:
        ch = conn.channel()
        try:
            ok = ch.queue_declare(name, passive=True).method
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise TransientError(f"RabbitMQ closed the channel ({exc.reply_code})") from exc
            return None, None
        ch.close()
        return int(ok.message_count), int(ok.consumer_count)

    try:
        out = []
        for role in WORK_QUEUES:
            depth, consumers = declare(topology.queue(role))
            dlq_depth, _ = declare(topology.dlq(role))
            out.append(
                QueueStatus(
                    role, topology.queue(role), depth, consumers, topology.dlq(role), dlq_depth
                )
            )
        return out
    except _CONN_ERRORS as exc:
        raise TransientError(f"RabbitMQ connection lost ({type(exc).__name__})") from exc
    finally:
        pika_log.setLevel(level)
        _close(conn)


def collect(
    store: ObjectStore,
    settings: Settings,
    *,
    codes: list[str],
    configured: set[str],
    days: list[str],
) -> Status:
    """Everything ``smartbox status`` prints."""
    from consumers.export_state import ExportState

    state = ExportState(store, settings.staging_bucket)
    status = Status((days[0], days[-1]))
    for code in codes:
        status.trusts.append(
            trust_status(
                store,
                state,
                code=code,
                configured=code in configured,
                quarantine=settings.quarantine_bucket,
                staging=settings.staging_bucket,
                days=days,
            )
        )
    try:
        status.queues = queue_status(settings.amqp_url, Topology(settings.namespace))
    except TransientError as exc:
        status.broker_error = str(exc)
    return status


# --- the command ----------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="per trust: received, pending, staged, exported, acknowledged, held back, last "
        "seen; queue depths and consumers (from the running deployment)",
    )
    p.add_argument("--trust", action="append", dest="trusts", metavar="CODE", help="only this")
    p.add_argument(
        "--days",
        type=int,
        default=1,
        help=f"window: today and the N-1 UTC days before (1-{MAX_DAYS}; default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``smartbox status``: 0, or 1 when RabbitMQ could not be reached (the trusts'
    numbers are still printed); ConfigError (exit 2) for operator mistakes."""
    from consumers.export_state import ExportState
    from smartbox.s3 import S3Store
    from smartbox.trusts import TRUST_CODE_RE

    from .preflight import trust_codes

    if not 1 <= args.days <= MAX_DAYS:
        raise ConfigError(f"--days {args.days}: a number of days from 1 to {MAX_DAYS}")
    for code in args.trusts or []:
        if not TRUST_CODE_RE.match(code):
            raise ConfigError(f"--trust {code!r}: 2-8 upper-case letters or digits")
    store = S3Store(settings.s3)
    configured = set(trust_codes(settings.trusts_dir))
    try:
        known = set(ExportState(store, settings.staging_bucket).trusts())
    except TransientError:
        if not store.ping():
            raise
        known = set()  # no staging bucket yet
    codes = sorted(configured | known)
    if args.trusts:
        unknown = [c for c in args.trusts if c not in codes]
        if unknown:
            raise ConfigError(
                f"--trust {unknown[0]}: no trust file in {settings.trusts_dir} and no record of "
                "it in staging"
            )
        codes = sorted(set(args.trusts))
    elif not codes:
        raise ConfigError(
            f"no trusts: no trust file in {settings.trusts_dir} (SMARTBOX_TRUSTS_DIR) and "
            "nothing staged yet"
        )
    status = collect(
        store, settings, codes=codes, configured=configured, days=window_days(args.days)
    )
    if args.json:
        print(json.dumps(as_json(status), indent=2, sort_keys=True))
    else:
        print(render(status))
    if status.broker_error:
        print(f"smartbox: unavailable: {status.broker_error}", file=sys.stderr)
        return 1
    return 0


def as_json(status: Status) -> dict[str, Any]:
    return {
        "window": {"from": status.window[0], "to": status.window[1], "timezone": "UTC"},
        "trusts": [asdict(t) for t in status.trusts],
        "queues": None if status.queues is None else [asdict(q) for q in status.queues],
        "broker_error": status.broker_error,
    }


_COLUMNS: tuple[tuple[str, Callable[[TrustStatus], object]], ...] = (
    ("TRUST", lambda t: t.trust + ("" if t.configured else "*")),
    ("RECEIVED", lambda t: f"{t.received_studies}/{t.received_instances}"),
    ("IN-DEID", lambda t: t.in_deid),
    ("STAGED", lambda t: f"{t.staged_studies}/{t.staged_instances}"),
    ("HELD-BACK", lambda t: t.held_back_instances),
    ("EXPORTED", lambda t: t.exported_studies),
    ("ACKED", lambda t: t.acknowledged_studies),
    ("FAILED", lambda t: t.failed_studies),
    ("PENDING", lambda t: t.pending_export),
    ("IN-FLIGHT", lambda t: t.in_flight),
    ("LAST-SEEN", lambda t: t.last_seen or "-"),
    ("PROBES", lambda t: t.probe_studies),
)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


_CLINICAL: tuple[tuple[str, Callable[[ClinicalCounts], object]], ...] = (
    ("TRUST", lambda c: c.trust),
    ("ACCEPTED", lambda c: c.accepted),
    ("HELD-BACK", lambda c: c.held_back),
    ("STAGED", lambda c: c.staged),
    ("EXPORTED", lambda c: c.exported),
    ("ACKED", lambda c: c.acknowledged),
    ("PENDING", lambda c: c.pending),
    ("IN-FLIGHT", lambda c: c.in_flight),
    ("FAILED", lambda c: c.failed),
    ("WITHDRAWN", lambda c: c.withdrawn),
)


def _clinical_lines(status: Status) -> list[str]:
    """The clinical records table, when some trust has any in the window."""
    counts = [
        t.clinical for t in status.trusts if t.clinical and (t.clinical.rows or t.clinical.staged)
    ]
    if not counts:
        return []
    lines = [
        "",
        "clinical records in the window: rows ACCEPTED and HELD-BACK by clinical submit; record "
        "versions STAGED, of those EXPORTED (sent in a batch), ACKED, PENDING (waiting for a "
        "first batch), IN-FLIGHT, FAILED, WITHDRAWN",
        "",
    ]
    rows = [[name for name, _ in _CLINICAL]]
    rows += [[str(fn(c)) for _, fn in _CLINICAL] for c in counts]
    lines += _table(rows)
    for c in counts:
        if c.held_back_reasons:
            reasons = ", ".join(f"{r} {n}" for r, n in c.held_back_reasons.items())
            lines.append(f"{c.trust}: clinical rows held back: {reasons}")
    return lines


def render(status: Status) -> str:
    """The text an operator reads (``--json`` for machines)."""
    start, end = status.window
    lines = [
        f"window {start} .. {end} (UTC days): studies/instances received and staged, "
        "instances held back, staged studies exported / acknowledged / failed;",
        "now: PENDING studies waiting for an export window, IN-FLIGHT sent without a receipt;",
        "LAST-SEEN: the newest study received in the window; PROBES: smartbox probe studies "
        "(in none of the other columns)",
        "",
    ]
    rows = [[name for name, _ in _COLUMNS]]
    rows += [[str(fn(t)) for _, fn in _COLUMNS] for t in status.trusts]
    lines += _table(rows)
    if any(not t.configured for t in status.trusts):
        lines.append("* no trust file here: known from the exporter's records only")
    if any(t.skipped for t in status.trusts):
        lines.append(f"unreadable records skipped: {sum(t.skipped for t in status.trusts)}")
    lines += _clinical_lines(status)
    lines.append("")
    if status.queues is None:
        lines.append(f"queues: {status.broker_error}")
        return "\n".join(lines)

    def n(value: int | None) -> str:
        return "absent" if value is None else str(value)

    rows = [["QUEUE", "MESSAGES", "CONSUMERS", "DEAD-LETTERS"]]
    rows += [[q.queue, n(q.messages), n(q.consumers), n(q.dlq_messages)] for q in status.queues]
    lines += _table(rows)
    return "\n".join(lines)
