"""``smartbox report``: what happened to one trust's studies, for its data governance lead.

A self-contained HTML page (inline SVG plots, no script, no external asset) with, per day of
the period: studies and instances received, de-identified (staged), held back by reason,
exported and acknowledged by the national side; the profile, its options, the Annex E table
edition and the key version that were applied; and every attribute the profile removes or
replaces. The numbers come from the box's own records in object storage
(``smartbox.report_records``), not from metrics, so a restart loses nothing.

It carries counts only: no patient data, no original or pseudonymous UID, no object key.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from consumers.clinical.counts import ClinicalCounts
from smartbox.errors import ConfigError
from smartbox.report_records import Profile, Records, read_records

if TYPE_CHECKING:
    from smartbox.settings import Settings
    from smartbox.store import ObjectStore
    from smartbox.trusts import TrustConfig

MAX_DAYS = 366
#: Table E.1-1 actions after compilation (consumers.deid.table), most protective first
ACTION_ORDER = ("X", "Z", "D", "U", "C", "K")


@dataclass
class DayCounts:
    """One day's counts (or the period's totals)."""

    received_studies: int = 0
    received_instances: int = 0
    staged_studies: int = 0
    staged_instances: int = 0
    held_instances: int = 0
    exported_studies: int = 0
    exported_instances: int = 0
    acknowledged_studies: int = 0
    acknowledged_instances: int = 0
    held_by_reason: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Attribute:
    tag: str
    keyword: str
    name: str


@dataclass
class TrustReport:
    """Everything the page shows; built by ``build_report``, drawn by ``report_html``."""

    code: str
    name: str
    start: date
    end: date
    timezone: str
    generated_at: str
    days: list[tuple[date, DayCounts]]
    totals: DayCounts
    profiles: list[tuple[Profile, int]]
    configured_options: tuple[str, ...] | None
    attributes: list[tuple[tuple[str, ...], dict[str, list[Attribute]]]]
    awaiting_deidentification: int
    awaiting_export: int
    awaiting_acknowledgement: int
    set_aside: int  # rejected nationally max_attempts times: surfaced, not re-sent
    withdrawn: int
    skipped_records: int
    clinical: ClinicalCounts | None = None  # submitted and staged in the period


def parse_day(text: str, what: str) -> date:
    """An ISO date (YYYY-MM-DD); ConfigError naming the option otherwise."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r}: expected a date as YYYY-MM-DD") from None


def parse_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--timezone {name!r}: not a known time zone") from None


def attribute_actions(options: tuple[str, ...]) -> dict[str, list[Attribute]]:
    """Every row of Table E.1-1 (and the rows the engine adds) by the action it gets under
    ``options``: compiled by the de-identifier's own code, so the report cannot drift from it."""
    from pydicom.datadict import dictionary_description

    from consumers.deid.allowlist import SUPPLEMENTARY_ROWS
    from consumers.deid.table import annex_e_rows, parse_tag, row_action

    by_action: dict[str, list[Attribute]] = {a: [] for a in ACTION_ORDER}
    seen: set[str] = set()
    rows = [*annex_e_rows(), *SUPPLEMENTARY_ROWS]
    for row in rows:
        tag = row["tag"]
        if tag in seen:  # the table's own row wins over a supplementary one (compile_table)
            continue
        seen.add(tag)
        name = row.get("name")
        if not name:
            try:
                name = dictionary_description(parse_tag(tag))
            except (KeyError, ValueError):
                name = ""
        action = row_action(row, options)
        by_action.setdefault(action, []).append(
            Attribute(tag, str(row.get("keyword") or ""), str(name))
        )
    return {a: sorted(v, key=lambda x: x.tag) for a, v in by_action.items() if v}


def _in(day: date, start: date, end: date) -> bool:
    return start <= day <= end


def summarise(
    records: Records, start: date, end: date
) -> tuple[list[tuple[date, DayCounts]], DayCounts]:
    """Per-day counts over ``start..end`` (inclusive, every day present) and their totals."""
    days = {start + timedelta(n): DayCounts() for n in range((end - start).days + 1)}
    studies: dict[tuple[date | None, str], set[str]] = {}

    def study(day: date, kind: str, ref: str) -> None:
        studies.setdefault((day, kind), set()).add(ref)
        studies.setdefault((None, kind), set()).add(ref)

    received_ids = {r.batch_id for r in records.received}
    for r in records.received:
        if _in(r.day, start, end):
            days[r.day].received_instances += r.instances
            study(r.day, "received", r.study)
    for s in records.staged:
        if not _in(s.day, start, end):
            continue
        d = days[s.day]
        if s.batch_id not in received_ids:
            # its quarantine record is gone (retention): what it took in is in the manifest
            d.received_instances += s.instances + sum(s.held_back.values())
            study(s.day, "received", "staged:" + s.study)
        d.staged_instances += s.instances
        if s.instances:
            study(s.day, "staged", s.study)
        d.held_by_reason.update(s.held_back)
        d.held_instances += sum(s.held_back.values())
    for e in records.exports:
        if e.sent_day is not None and _in(e.sent_day, start, end):
            days[e.sent_day].exported_instances += e.instances
            study(e.sent_day, "exported", e.study)
        if e.acked_day is not None and _in(e.acked_day, start, end):
            days[e.acked_day].acknowledged_instances += e.instances
            study(e.acked_day, "acknowledged", e.study)
    totals = DayCounts()
    for day, d in days.items():
        d.received_studies = len(studies.get((day, "received"), ()))
        d.staged_studies = len(studies.get((day, "staged"), ()))
        d.exported_studies = len(studies.get((day, "exported"), ()))
        d.acknowledged_studies = len(studies.get((day, "acknowledged"), ()))
        for name in (
            "received_instances",
            "staged_instances",
            "held_instances",
            "exported_instances",
            "acknowledged_instances",
        ):
            setattr(totals, name, getattr(totals, name) + getattr(d, name))
        totals.held_by_reason.update(d.held_by_reason)
    for kind in ("received", "staged", "exported", "acknowledged"):
        setattr(totals, f"{kind}_studies", len(studies.get((None, kind), ())))
    return sorted(days.items()), totals


def build_report(
    store: ObjectStore,
    *,
    code: str,
    start: date,
    end: date,
    trust: TrustConfig | None = None,
    quarantine_bucket: str = "quarantine",
    staging_bucket: str = "staging",
    timezone: str = "Europe/London",
) -> TrustReport:
    """Read the trust's records and count them over ``start..end`` (inclusive)."""
    if end < start:
        raise ConfigError(f"--to {end} is before --from {start}")
    if (end - start).days + 1 > MAX_DAYS:
        raise ConfigError(f"--from {start} --to {end}: at most {MAX_DAYS} days per report")
    tz = parse_zone(timezone)
    records = read_records(
        store, quarantine=quarantine_bucket, staging=staging_bucket, code=code, tz=tz
    )
    from consumers.clinical.counts import count

    since = datetime.combine(start, datetime.min.time(), tz).timestamp()
    until = datetime.combine(end + timedelta(days=1), datetime.min.time(), tz).timestamp()
    clinical = count(store, staging_bucket, code, since=since, until=until)
    if trust is None and not (
        records.received or records.staged or records.exports or clinical.rows or clinical.staged
    ):
        raise ConfigError(f"unknown trust {code}: no trust file and no records in storage")
    days, totals = summarise(records, start, end)
    profiles = Counter(s.profile for s in records.staged if s.profile and _in(s.day, start, end))
    configured = _configured_options(trust) if trust is not None else None
    option_sets = sorted({p.options for p in profiles}) or ([configured] if configured else [])
    staged_ids = {s.batch_id for s in records.staged}
    states = Counter(e.state for e in records.exports)
    return TrustReport(
        code=code,
        name=trust.name if trust is not None else code,
        start=start,
        end=end,
        timezone=timezone,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        days=days,
        totals=totals,
        profiles=sorted(profiles.items(), key=lambda pc: -pc[1]),
        configured_options=configured,
        attributes=[(opts, attribute_actions(opts)) for opts in option_sets],
        awaiting_deidentification=len({r.batch_id for r in records.received} - staged_ids),
        awaiting_export=states["pending"],
        awaiting_acknowledgement=states["sent"],
        set_aside=states["failed"],
        withdrawn=states["withdrawn"],
        skipped_records=records.skipped + clinical.skipped,
        clinical=clinical,
    )


def write_report(report: TrustReport, out: Path) -> Path:
    """Write the HTML page; returns its path."""
    from .report_html import render

    page = render(report)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot be written: {exc.strerror}") from None
    return out


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``smartbox report``."""
    p = sub.add_parser(
        "report",
        help="per-trust transparency report (HTML) for the trust's governance lead",
        description="Write a self-contained HTML report of what happened to one trust's "
        "studies over a period: received, de-identified, held back by reason, exported and "
        "acknowledged, per day with plots; the profile, options, table edition and key "
        "version; the attributes removed or replaced. Counts only, no patient data.",
    )
    p.add_argument("--trust", required=True, help="trust code (its trust file gives the name)")
    p.add_argument("--from", dest="start", required=True, metavar="DATE", help="YYYY-MM-DD")
    p.add_argument("--to", dest="end", required=True, metavar="DATE", help="YYYY-MM-DD, inclusive")
    p.add_argument("--out", default=None, help="HTML file (default report-CODE-FROM-TO.html)")
    p.add_argument(
        "--pdf",
        default=None,
        metavar="FILE",
        help="also print the report to a PDF (headless Chromium: the page exactly as a browser "
        "shows it)",
    )
    p.add_argument(
        "--browser",
        default=None,
        metavar="PATH",
        help="Chromium or Chrome for --pdf (default: chromium, chromium-browser or "
        "google-chrome on PATH)",
    )
    p.add_argument("--timezone", default="Europe/London", help="whose days (default %(default)s)")
    p.add_argument(
        "--local-store",
        default=None,
        metavar="DIR",
        help="read a local-directory object store (e.g. DEMO_WORKDIR/objects) instead of S3",
    )


def _configured_options(trust: TrustConfig) -> tuple[str, ...]:
    """The options the trust's studies are de-identified with, as the anonymiser builds them."""
    from consumers.deid.policy import PolicyBuilder

    return tuple(sorted(PolicyBuilder.from_env().options_for(trust)))


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``smartbox report``; ConfigError for operator mistakes (exit 2)."""
    from smartbox.store import LocalStore
    from smartbox.trusts import TRUST_CODE_RE, TrustRegistry

    code = args.trust
    if not TRUST_CODE_RE.match(code):
        raise ConfigError(f"--trust {code!r}: 2-8 upper-case letters or digits")
    start, end = parse_day(args.start, "--from"), parse_day(args.end, "--to")
    trust = None
    if (settings.trusts_dir / f"{code}.toml").is_file():
        trust = TrustRegistry(settings.trusts_dir).get(code)
    store: ObjectStore
    if args.local_store:
        root = Path(args.local_store)
        if not root.is_dir():
            raise ConfigError(f"--local-store {root}: no such directory")
        store = LocalStore(root)
    else:
        from smartbox.s3 import S3Store

        store = S3Store(settings.s3)
    report = build_report(
        store,
        code=code,
        start=start,
        end=end,
        trust=trust,
        quarantine_bucket=settings.quarantine_bucket,
        staging_bucket=settings.staging_bucket,
        timezone=args.timezone,
    )
    out = Path(args.out or f"report-{code}-{start}-{end}.html")
    browser = find_browser(args.browser) if args.pdf else None  # before any work is written
    write_report(report, out)
    if args.pdf and browser:
        from smartbox.errors import PermanentError

        try:
            print_pdf(browser, out, Path(args.pdf))
        except PermanentError as exc:  # the HTML stands; one line, exit 1
            print(f"report written to {out}\nsmartbox: {exc}", file=sys.stderr)
            return 1
        print(f"PDF written to {args.pdf}")
    t = report.totals
    print(
        f"{code}: {t.received_studies} studies / {t.received_instances} instances received, "
        f"{t.staged_instances} de-identified, {t.held_instances} held back, "
        f"{t.exported_instances} exported, {t.acknowledged_instances} acknowledged"
    )
    print(f"report written to {out}")
    return 0


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser(given: str | None) -> str:
    """The browser that prints ``--pdf``; ConfigError naming what to install or pass."""
    import shutil

    if given:
        found = shutil.which(given)
        if not found:
            raise ConfigError(f"--browser {given}: not found or not executable")
        return found
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise ConfigError(
        "--pdf needs Chromium (apt-get install chromium) or Chrome, or --browser PATH"
    )


def print_pdf(browser: str, html: Path, pdf: Path, timeout: float = 120) -> None:
    """Print `html` to `pdf` with headless Chromium (no network: the page is self-contained,
    so nothing is fetched). Raises PermanentError when the browser fails."""
    import subprocess
    import tempfile

    from smartbox.errors import PermanentError

    pdf = pdf.resolve()
    with tempfile.TemporaryDirectory(prefix="smartbox-pdf-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",  # runs as the service user, often in a container
            "--disable-gpu",
            "--no-pdf-header-footer",
            f"--user-data-dir={profile}",
            f"--print-to-pdf={pdf}",
            html.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = exc.__class__.__name__
            raise PermanentError(f"--pdf: the browser did not run: {why}") from None
    if done.returncode != 0 or not pdf.is_file() or pdf.read_bytes()[:5] != b"%PDF-":
        raise PermanentError(f"--pdf: {Path(browser).name} exited {done.returncode} without a PDF")
