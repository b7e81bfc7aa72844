"""What each process checks before it starts (and ``smartbox check-config`` checks for all),
and the metric series it creates at start.

One path: ``smartbox receive|anonymise|export|ingest`` call ``require(role)`` before they build
anything, and ``check-config`` calls ``check(roles)``; both run the very loaders the processes
use (``Settings``, the trust files, the pseudonymisation key, every trust's de-identification
policy, the export signing key and policy, the national verification key). So whatever would
stop a process at start, check-config reports first, and both report every problem found, one
line each, never only the first.

This sits beside ``smartbox.app.cli`` in the composition root: it asks the stages for their own
settings (``consumers.export_policy``, ``consumers.deid.policy``,
``producers.retrieve.config``) and vocabularies (held-back
reasons, C-STORE statuses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smartbox.errors import ConfigError
from smartbox.settings import Settings
from smartbox.trusts import TRUST_CODE_RE, TrustConfig, load_all_trusts, load_trust

#: the processes, by their ``smartbox`` command
ROLES = ("receive", "anonymise", "export", "ingest")
#: what ``check-config`` checks unless ``--role`` says: the regional hub (ingest is national)
HUB_ROLES = ("receive", "anonymise", "export")


@dataclass
class Report:
    """The settings (defaults where a value was wrong), the trusts loaded, every problem."""

    settings: Settings
    trusts: dict[str, TrustConfig] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    checked: tuple[str, ...] = ()

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, or None with its problems recorded if it raises ConfigError."""
        try:
            return fn(*args)
        except ConfigError as exc:
            self.problems.extend(str(exc).splitlines())
            return None


def check(
    roles: Iterable[str],
    environ: Mapping[str, str] | None = None,
    *,
    trust: str | None = None,
    require_trusts: bool = False,
) -> Report:
    """Everything ``roles`` validate at start. ``trust``: a receiver checks only its own trust
    file (the others are not its business); ``require_trusts``: no trust file is a problem
    (for check-config: an anonymiser may start before the first trust is added)."""
    wanted = tuple(r for r in ROLES if r in set(roles))
    settings, problems = Settings.parse(environ)
    report = Report(settings, problems=problems, checked=wanted)
    uses_trusts = {"receive", "anonymise"} & set(wanted)
    if trust is not None:
        loaded = report.run(load_trust, settings.trusts_dir, trust)
        report.trusts = {loaded.code: loaded} if loaded else {}
    elif uses_trusts:
        report.trusts = report.run(load_all_trusts, settings.trusts_dir) or {}
        folder = settings.trusts_dir
        if require_trusts and folder.is_dir() and not any(folder.glob("*.toml")):
            report.problems.append(
                f"SMARTBOX_TRUSTS_DIR: no trust files (*.toml) in {folder.resolve()}: "
                "add one with `smartbox trust add`"
            )
    if uses_trusts:
        from smartbox.keys import RegionalKey

        report.run(RegionalKey.from_env, environ)
    if "anonymise" in wanted:
        _check_policies(report, environ)
    if uses_trusts:
        _check_retrieve(report)
    if "export" in wanted:
        from consumers.export_policy import ExportPolicy
        from smartbox.signing import Signer

        report.run(Signer.from_env, environ)
        report.run(ExportPolicy.from_env, environ)
    if "ingest" in wanted:
        from smartbox.signing import Verifier

        report.run(Verifier.from_env, environ)
    return report


def _check_policies(report: Report, environ: Mapping[str, str] | None) -> None:
    """Every trust's de-identification policy, built by its one owner exactly as the
    anonymiser builds it (options, mask rules, OCR and tesseract on this machine)."""
    from consumers.deid.policy import PolicyBuilder
    from consumers.identity_index import check_env

    report.run(check_env, environ)  # the identity index key, if set (key rotation)
    builder = report.run(PolicyBuilder.from_env, environ)
    if builder is None:
        return
    for trust in report.trusts.values():
        report.run(builder.for_trust, trust)


def _check_retrieve(report: Report) -> None:
    """Every trust's ``[retrieve]`` table (its archives, limits and window), by its one owner
    exactly as ``smartbox cohort`` reads it."""
    from producers.retrieve.config import parse

    for trust in report.trusts.values():
        report.run(parse, trust)


def require(
    role: str, environ: Mapping[str, str] | None = None, *, trust: str | None = None
) -> Settings:
    """The settings of a process about to start as ``role``; ConfigError listing every
    problem (one per line) if anything it needs is missing or wrong."""
    report = check([role], environ, trust=trust)
    if report.problems:
        raise ConfigError("\n".join(report.problems))
    return report.settings


def trust_codes(folder: Path) -> list[str]:
    """The codes of the trust files in ``folder`` (none if it does not exist), unvalidated:
    for processes that only label by trust (exporter, ingest)."""
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.toml") if TRUST_CODE_RE.match(p.stem))


def init_series(role: str, settings: Settings, *, trust: str | None = None) -> None:
    """Create at zero the per-trust series ``role`` reports, for its own trust (receiver) or
    every trust file (the others): a configured trust is on the dashboard and in the alerts
    (a silent trust, a failure ratio) from start-up, not from its first event."""
    from smartbox import metrics

    trusts = [trust] if trust is not None else trust_codes(settings.trusts_dir)
    labelled: dict[Any, Any] = {}
    if role == "receive":
        from producers.receiver.status import ASSOCIATION_RESULTS, CSTORE_STATUSES, status_label

        labelled = {
            metrics.CSTORE_STATUS: [status_label(s) for s in sorted(CSTORE_STATUSES)],
            metrics.ASSOCIATIONS: sorted(ASSOCIATION_RESULTS),
        }
    elif role == "anonymise":
        from consumers.deid.reasons import Reason

        labelled = {metrics.INSTANCES_HELD_BACK: sorted({r.label for r in Reason})}
    elif role == "export":
        # the national side names its own reasons; ours (no receipt in time) exists from start
        labelled = {metrics.CLINICAL_REJECTED: ["no_receipt"]}
    metrics.init_series(role, trusts, labelled)
