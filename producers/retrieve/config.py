"""The ``[retrieve]`` table of a trust file: the trust's archives and how gently to ask them.

One owner (STYLE 17): ``smartbox cohort`` and ``smartbox check-config`` both call ``parse``;
the trust-file loader only checks that the table is a table. Every problem is one line naming
the file and the key (``trusts/RGT.toml: field 'retrieve.archives[0].port': ...``).

::

    [retrieve]
    calling_ae = "SMARTBOX_QR"          # our AE title towards the archive (default SMARTBOX_QR)
    move_destination = "SMARTBOX_RGT"   # default: the trust's own receiver (its ae_title)
    receiver_host = "127.0.0.1"         # C-GET: where the trust's receiver listens (default:
                                        # its bind_host, loopback if that is a wildcard)
    modalities = ["CR", "DX", "CT", "MR"]
    body_parts = ["CHEST", "THORAX", "LUNG"]            # series BodyPartExamined
    description_include = ["chest", "thora", "lung"]    # study description, case-insensitive
    description_exclude = ["head", "brain"]
    max_attempts = 5                    # per study, then failed with its reason
    retry_initial_seconds = 60          # backoff between attempts (doubling, capped)
    retry_max_seconds = 3600
    swab_days_before = 14               # cohorts from clinical data: chest imaging from 14 days
    swab_days_after = 28                # before each swab to 28 days after it

    [[retrieve.archives]]
    name = "pacs"
    ae_title = "RGT_PACS"
    host = "10.20.1.5"
    port = 104
    method = "C-MOVE"                   # or "C-GET": the archive sends over our association
    max_associations = 2                # open at once towards this archive
    instances_per_second = 20           # token bucket, refilled continuously
    burst_instances = 100               # bucket size
    queries_per_second = 2
    window_start = "0 19 * * *"         # cron: when the off-peak window opens ...
    window_hours = 11                   # ... and for how long
    timezone = "Europe/London"
    # [retrieve.archives.tls]  cert_file, key_file, ca_file (client side)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smartbox import validate
from smartbox.errors import ConfigError
from smartbox.trusts import AE_TITLE_RE, TrustConfig, tls_files

DEFAULT_MODALITIES = ("CR", "DX", "CT", "MR")
DEFAULT_BODY_PARTS = ("CHEST", "THORAX", "LUNG")
DEFAULT_INCLUDE = (r"chest", r"thora", r"lung", r"\bcxr\b", r"\bctpa\b", r"pulmonary")
DEFAULT_EXCLUDE = (r"\bhead\b", r"brain", r"skull")
METHODS = ("C-MOVE", "C-GET")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # noqa: S104 - a bind address, not one we bind
_LOOPBACK = ("127.0.0.1", "localhost")
_MODALITY_RE = re.compile(r"^[A-Z0-9]{1,16}$")
_NAME_RE = re.compile(r"^[a-z0-9_-]{1,32}$")

_TOP_KEYS = {
    "calling_ae",
    "move_destination",
    "receiver_host",
    "modalities",
    "body_parts",
    "description_include",
    "description_exclude",
    "max_attempts",
    "retry_initial_seconds",
    "retry_max_seconds",
    "resume_grace_seconds",
    "swab_days_before",
    "swab_days_after",
    "archives",
}
_ARCHIVE_KEYS = {
    "name",
    "ae_title",
    "host",
    "port",
    "method",
    "tls",
    "max_associations",
    "instances_per_second",
    "burst_instances",
    "queries_per_second",
    "window_start",
    "window_hours",
    "timezone",
    "network_timeout_seconds",
}


@dataclass(frozen=True)
class ClientTls:
    """DICOM TLS towards an archive (we are the client)."""

    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None


@dataclass(frozen=True)
class Archive:
    """One query/retrieve peer of a trust, with the limits its PACS manager agreed."""

    name: str
    ae_title: str
    host: str
    port: int
    method: str = "C-MOVE"
    tls: ClientTls | None = None
    max_associations: int = 2
    instances_per_second: float = 10.0
    burst_instances: int = 50
    queries_per_second: float = 2.0
    window_start: str = "0 19 * * *"
    window_hours: float = 11.0
    timezone: str = "Europe/London"
    network_timeout_seconds: float = 60.0


@dataclass(frozen=True)
class Filters:
    """Which studies a cohort wants (a row may narrow modalities and body parts)."""

    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    body_parts: tuple[str, ...] = DEFAULT_BODY_PARTS
    description_include: tuple[str, ...] = DEFAULT_INCLUDE
    description_exclude: tuple[str, ...] = DEFAULT_EXCLUDE


@dataclass(frozen=True)
class ReceiverTarget:
    """The trust's own receiver, as the cohort process reaches it to pass on what a C-GET
    brings (it runs on the receiver's host)."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class RetrieveConfig:
    """A trust's retrieval settings, validated."""

    trust: str
    calling_ae: str
    move_destination: str
    archives: tuple[Archive, ...]
    filters: Filters
    receiver: ReceiverTarget
    #: the trust's attribute holding the NHS number in its images: what a C-FIND for a
    #: cohort patient with an NHS number matches on
    nhs_number_attribute: str = "PatientID"
    max_attempts: int = 5
    retry_initial_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    #: after a crash, a study whose move was under way waits this long before it is resumed,
    #: so the archive's last sub-operations land (and are found in the ledger) first
    resume_grace_seconds: float = 30.0
    #: a cohort from clinical data (``smartbox clinical submit --cohort``): the studies of each
    #: patient with a swab result from this many days before their first swab to this many
    #: after their last
    swab_days_before: int = 14
    swab_days_after: int = 28


def _fail(path: Path, key: str, why: str) -> ConfigError:
    return ConfigError(f"{path}: field 'retrieve.{key}': {why}")


def _number(
    path: Path, raw: Mapping[str, Any], key: str, where: str, default: float, lo: float, hi: float
) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _fail(path, f"{where}{key}", f"a number from {lo:g} to {hi:g}")
    return float(value)


def _integer(
    path: Path, raw: Mapping[str, Any], key: str, where: str, default: int, lo: int, hi: int
) -> int:
    value = _number(path, raw, key, where, default, lo, hi)
    if not value.is_integer():
        raise _fail(path, f"{where}{key}", f"an integer {lo}-{hi}")
    return int(value)


def _ae(path: Path, raw: Mapping[str, Any], key: str, where: str, default: str | None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not AE_TITLE_RE.match(value.strip()):
        raise _fail(path, f"{where}{key}", "an AE title: 1-16 printable ASCII, no backslash")
    return value.strip()


def _strings(
    path: Path, raw: Mapping[str, Any], key: str, default: tuple[str, ...]
) -> tuple[str, ...]:
    value = raw.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(path, key, "a list of non-empty strings")
    return tuple(v.strip() for v in value)


def _patterns(path: Path, raw: Mapping[str, Any], key: str, default: tuple[str, ...]) -> tuple:
    values = _strings(path, raw, key, default)
    for value in values:
        try:
            re.compile(value, re.IGNORECASE)
        except re.error as exc:
            raise _fail(path, key, f"not a regular expression ({exc.msg})") from None
    return values


def parse_filters(path: Path, raw: Mapping[str, Any]) -> Filters:
    """The default study filters of a trust (chest CR/DX/CT/MR unless it says otherwise)."""
    modalities = tuple(m.upper() for m in _strings(path, raw, "modalities", DEFAULT_MODALITIES))
    if not modalities or not all(_MODALITY_RE.match(m) for m in modalities):
        raise _fail(path, "modalities", "at least one modality code (CT, MR, CR, DX, ...)")
    body_parts = tuple(b.upper() for b in _strings(path, raw, "body_parts", DEFAULT_BODY_PARTS))
    return Filters(
        modalities=modalities,
        body_parts=body_parts,
        description_include=_patterns(path, raw, "description_include", DEFAULT_INCLUDE),
        description_exclude=_patterns(path, raw, "description_exclude", DEFAULT_EXCLUDE),
    )


def _tls(path: Path, raw: Any, where: str) -> ClientTls | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail(path, f"{where}tls", "a table with ca_file, cert_file, key_file")
    unknown = sorted(set(raw) - {"ca_file", "cert_file", "key_file"})
    if unknown:
        raise _fail(path, f"{where}tls.{unknown[0]}", "unknown field")
    files = tls_files(path, raw, ("ca_file", "cert_file", "key_file"), f"{where}tls.", _fail)
    if (files["cert_file"] is None) != (files["key_file"] is None):
        raise _fail(path, f"{where}tls", "cert_file and key_file go together")
    return ClientTls(files["ca_file"], files["cert_file"], files["key_file"])


def _allowed(trust: TrustConfig, ae_title: str) -> bool:
    return "*" in trust.allowed_callers or ae_title in trust.allowed_callers


def _receiver(path: Path, raw: Mapping[str, Any], trust: TrustConfig) -> ReceiverTarget:
    default = "127.0.0.1" if trust.bind_host.strip() in _WILDCARD_HOSTS else trust.bind_host
    host = raw.get("receiver_host", default)
    if not isinstance(host, str) or not host.strip():
        raise _fail(path, "receiver_host", "the host name or address of the trust's receiver")
    return ReceiverTarget(trust.ae_title, host.strip(), trust.port)


def _check_get(path: Path, calling_ae: str, trust: TrustConfig, receiver: ReceiverTarget) -> None:
    """With C-GET the cohort process hands each instance to the receiver itself."""
    if receiver.host in _LOOPBACK and trust.allowed_networks:
        allowed, _why = trust.caller_allowed(calling_ae, "127.0.0.1")
        if not allowed and _allowed(trust, calling_ae):
            raise _fail(
                path,
                "receiver_host",
                "the receiver's allowed_networks leave out 127.0.0.1, where the cohort process "
                "passes C-GET instances on from: add 127.0.0.1/32 to allowed_networks",
            )
    if not _allowed(trust, calling_ae):
        raise _fail(
            path,
            "calling_ae",
            f"add {calling_ae!r} to allowed_callers too: with C-GET the cohort process passes "
            "the instances to the receiver as this AE title",
        )
    if trust.tls is not None:
        raise _fail(
            path,
            "archives",
            "C-GET to a trust whose receiver requires TLS is not supported yet: use C-MOVE",
        )


def parse_archive(path: Path, raw: Any, index: int, trust: TrustConfig) -> Archive:
    """One ``[[retrieve.archives]]`` table."""
    where = f"archives[{index}]."
    if not isinstance(raw, dict):
        raise _fail(path, f"archives[{index}]", "a table ([[retrieve.archives]])")
    unknown = sorted(set(raw) - _ARCHIVE_KEYS)
    if unknown:
        raise _fail(path, f"{where}{unknown[0]}", "unknown field (typo?)")
    name = raw.get("name", f"archive{index}")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail(path, f"{where}name", "1-32 lower-case letters, digits, '_' or '-'")
    ae_title = _ae(path, raw, "ae_title", where, None)
    method = raw.get("method", "C-MOVE")
    if method not in METHODS:
        raise _fail(path, f"{where}method", "C-MOVE or C-GET")
    if method == "C-MOVE" and not _allowed(trust, ae_title):
        # the archive calls the receiver as itself to deliver a C-MOVE
        raise _fail(path, f"{where}ae_title", f"add {ae_title!r} to allowed_callers too")
    host = raw.get("host")
    if not isinstance(host, str) or not host.strip():
        raise _fail(path, f"{where}host", "required, the archive's host name or address")
    port = raw.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _fail(path, f"{where}port", "required, an integer 1-65535")
    window_start = raw.get("window_start", "0 19 * * *")
    if not isinstance(window_start, str):
        raise _fail(path, f"{where}window_start", "a cron expression")
    source = f"{path}: field 'retrieve.{where}window_start'"
    validate.cron(source, window_start)
    timezone = raw.get("timezone", "Europe/London")
    if not isinstance(timezone, str):
        raise _fail(path, f"{where}timezone", "an IANA time zone name")
    validate.time_zone(f"{path}: field 'retrieve.{where}timezone'", timezone)
    return Archive(
        name=name,
        ae_title=ae_title,
        host=host.strip(),
        port=port,
        method=method,
        tls=_tls(path, raw.get("tls"), where),
        max_associations=_integer(path, raw, "max_associations", where, 2, 1, 64),
        instances_per_second=_number(path, raw, "instances_per_second", where, 10, 0.01, 10000),
        burst_instances=_integer(path, raw, "burst_instances", where, 50, 1, 100000),
        queries_per_second=_number(path, raw, "queries_per_second", where, 2, 0.01, 1000),
        window_start=window_start,
        window_hours=_number(path, raw, "window_hours", where, 11, 0.1, 24),
        timezone=timezone,
        network_timeout_seconds=_number(path, raw, "network_timeout_seconds", where, 60, 1, 3600),
    )


def parse(trust: TrustConfig) -> RetrieveConfig | None:
    """The trust's retrieval settings (None: it has no ``[retrieve]`` table); ConfigError
    naming the file and key otherwise."""
    raw = trust.retrieve
    path = trust.source_file
    if not raw:
        return None
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise _fail(path, unknown[0], "unknown field (typo?)")
    archives_raw = raw.get("archives")
    if not isinstance(archives_raw, list) or not archives_raw:
        raise _fail(path, "archives", "at least one [[retrieve.archives]] table")
    archives = tuple(parse_archive(path, a, i, trust) for i, a in enumerate(archives_raw))
    names = [a.name for a in archives]
    if len(set(names)) != len(names):
        raise _fail(path, "archives", "each archive needs its own name")
    initial = _number(path, raw, "retry_initial_seconds", "", 60, 0.1, 86400)
    maximum = _number(path, raw, "retry_max_seconds", "", 3600, 0.1, 7 * 86400)
    if maximum < initial:
        raise _fail(path, "retry_max_seconds", "must be at least retry_initial_seconds")
    calling_ae = _ae(path, raw, "calling_ae", "", "SMARTBOX_QR")
    receiver = _receiver(path, raw, trust)
    if any(a.method == "C-GET" for a in archives):
        _check_get(path, calling_ae, trust, receiver)
    return RetrieveConfig(
        trust=trust.code,
        calling_ae=calling_ae,
        move_destination=_ae(path, raw, "move_destination", "", trust.ae_title),
        archives=archives,
        filters=parse_filters(path, raw),
        receiver=receiver,
        nhs_number_attribute=trust.nhs_number_attribute,
        max_attempts=_integer(path, raw, "max_attempts", "", 5, 1, 100),
        retry_initial_seconds=initial,
        retry_max_seconds=maximum,
        resume_grace_seconds=_number(path, raw, "resume_grace_seconds", "", 30, 0, 3600),
        swab_days_before=_integer(path, raw, "swab_days_before", "", 14, 0, 3650),
        swab_days_after=_integer(path, raw, "swab_days_after", "", 28, 0, 3650),
    )


def require(trust: TrustConfig) -> RetrieveConfig:
    """The trust's retrieval settings; ConfigError if it has none (``smartbox cohort``)."""
    config = parse(trust)
    if config is None:
        raise ConfigError(
            f"{trust.source_file}: no [retrieve] table: name the trust's archive(s) there "
            "(docs/retrieve.md)"
        )
    return config
