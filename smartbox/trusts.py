"""Trust files (``trusts/<CODE>.toml``): what a trust is, validated at start, failing fast
with the file and key named.

A trust file holds the trust's AE title and port, who may call (AE titles, networks, TLS),
which attribute holds the NHS number, study-completion timing, inflation limits and the
de-identification profile's options (their names and values are owned and checked by
``consumers.deid``; this module keeps them as the trust file gives them). No secrets: those
come from the environment (``smartbox.settings``).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .inflate import DEFAULT_MAX_INFLATE_RATIO, DEFAULT_MAX_INFLATED_BYTES

TRUST_CODE_RE = re.compile(r"^[A-Z0-9]{2,8}$")
AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII except backslash


@dataclass(frozen=True)
class TlsConfig:
    """DICOM TLS for one trust's receiver."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    verify_client: bool = False


@dataclass(frozen=True)
class TrustConfig:
    """One NHS trust: everything smartbox needs to know to receive and process its studies."""

    code: str
    name: str
    ae_title: str
    port: int
    allowed_callers: tuple[str, ...]
    source_file: Path
    nhs_number_attribute: str = "PatientID"
    bind_host: str = "0.0.0.0"  # noqa: S104 - a receiver listens for the trust's PACS
    allowed_networks: tuple[str, ...] = ()
    quiet_seconds: float = 60.0
    max_wait_seconds: float = 3600.0
    spool_high_water_bytes: int = 50 * 1024**3
    max_pdu: int = 131072
    #: the ``[deidentification]`` table as written: parsed and validated by its one owner,
    #: ``consumers.deid.policy`` (the plumbing does not know what a profile option means)
    deidentification: Mapping[str, Any] = field(default_factory=dict, hash=False)
    tls: TlsConfig | None = None
    workers: int | None = None  # SCP worker processes; None: one per CPU (max 4); 0: in-process
    max_associations: int = 32  # concurrent associations per SCP worker process
    #: limits on inflating a Deflated Explicit VR Little Endian dataset (deflate bombs)
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES
    max_inflate_ratio: float = DEFAULT_MAX_INFLATE_RATIO
    #: connections not (yet) associated, per SCP worker process; the oldest is closed beyond it
    max_pending_associations: int = 128
    #: connections not (yet) associated from one source address, per SCP worker process
    max_pending_per_address: int = 32
    #: deadline from connect to a whole A-ASSOCIATE-RQ, and from an A-ASSOCIATE-RJ or
    #: A-RELEASE-RP to the peer closing (PS3.8 ARTIM)
    artim_seconds: float = 30.0
    #: on an association, deadline for each whole PDU from when we start waiting for it
    network_timeout_seconds: float = 60.0
    #: the receiver's ledger forgets published instances after this many days: a resend
    #: within it is a duplicate, a resend after it is stored and announced again
    ledger_retention_days: float = 30.0
    #: export fairness: every study of this trust is backfill (a cohort load) ...
    backfill: bool = False
    #: ... or those sent by these calling AE titles (an archive, a migration) ...
    backfill_callers: tuple[str, ...] = ()
    #: ... or those whose instances were all acquired more than this many days before arrival
    prospective_max_age_days: float = 30.0
    #: the ``[retrieve]`` table as written (the trust's archives for cohort retrieval): parsed
    #: and validated by its one owner, ``producers.retrieve.config``
    retrieve: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: at most this many instances per ``study.arrived`` message: a big study is announced in
    #: chunks that several anonymisers process side by side (one study manifest all the same)
    announce_chunk_instances: int = 200
    #: upload lag (s) past which C-STORE responses are held back a little while uploads to
    #: quarantine make progress, so senders slow to what the box uploads
    #: (``producers.receiver.pace``); None: the default (``pace.lag_target``), 0: never
    intake_pace_lag_seconds: float | None = None

    def caller_allowed(self, calling_ae: str, address: str | None) -> tuple[bool, str]:
        """Whether a source address and calling AE title may associate; and why not.

        The source address is checked first: a peer outside ``allowed_networks`` learns
        nothing about which AE titles would be accepted."""
        if self.allowed_networks and address is not None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False, "source_address"
            if not any(ip in ipaddress.ip_network(n, strict=False) for n in self.allowed_networks):
                return False, "source_address"
        if "*" not in self.allowed_callers and calling_ae.strip() not in self.allowed_callers:
            return False, "calling_ae"
        return True, "ok"


_TRUST_KEYS = {
    "code",
    "name",
    "ae_title",
    "port",
    "allowed_callers",
    "nhs_number_attribute",
    "bind_host",
    "allowed_networks",
    "quiet_seconds",
    "max_wait_seconds",
    "spool_high_water_bytes",
    "max_pdu",
    "deidentification",
    "tls",
    "workers",
    "max_associations",
    "max_inflated_bytes",
    "max_inflate_ratio",
    "max_pending_associations",
    "max_pending_per_address",
    "artim_seconds",
    "network_timeout_seconds",
    "ledger_retention_days",
    "backfill",
    "backfill_callers",
    "announce_chunk_instances",
    "intake_pace_lag_seconds",
    "prospective_max_age_days",
    "retrieve",
}


def _fail(path: Path, fld: str, why: str) -> ConfigError:
    return ConfigError(f"{path}: field '{fld}': {why}")


def _str(path: Path, raw: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, key, "required, a non-empty string")
    return value.strip()


def _number(
    path: Path, raw: Mapping[str, Any], key: str, default: float, lo: float, hi: float
) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _fail(path, key, f"must be a number from {lo:g} to {hi:g}")
    return float(value)


def _integer(path: Path, raw: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = _number(path, raw, key, default, lo, hi)
    if not value.is_integer():
        raise _fail(path, key, f"an integer {lo}-{hi}")
    return int(value)


def _str_list(path: Path, raw: Mapping[str, Any], key: str, default: list[str]) -> list[str]:
    value = raw.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, key, "must be a list of strings")
    return [v.strip() for v in value]


def parse_trust(path: Path, raw: Mapping[str, Any]) -> TrustConfig:
    """Validate one trust file's parsed TOML; raise ConfigError naming the file and field."""
    unknown = sorted(set(raw) - _TRUST_KEYS)
    if unknown:
        raise _fail(path, unknown[0], "unknown field (typo?)")
    code = _str(path, raw, "code")
    if not TRUST_CODE_RE.match(code):
        raise _fail(path, "code", "2-8 upper-case letters or digits")
    if path.stem != code:
        raise _fail(path, "code", f"must match the file name ({path.stem})")
    ae_title = _str(path, raw, "ae_title")
    if not AE_TITLE_RE.match(ae_title):
        raise _fail(path, "ae_title", "1-16 printable ASCII characters, no backslash")
    port = raw.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise _fail(path, "port", "required, an integer 0-65535 (0: any free port)")
    callers = _str_list(path, raw, "allowed_callers", [])
    if not callers:
        raise _fail(path, "allowed_callers", "list at least one calling AE title (or '*')")
    for caller in callers:
        if caller != "*" and not AE_TITLE_RE.match(caller):
            raise _fail(path, "allowed_callers", "each a 1-16 character AE title")
    networks = _str_list(path, raw, "allowed_networks", [])
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise _fail(path, "allowed_networks", "each an address or CIDR range") from None
    nhs_attr = _str(path, raw, "nhs_number_attribute", "PatientID")
    from pydicom.datadict import tag_for_keyword

    if tag_for_keyword(nhs_attr) is None:
        raise _fail(path, "nhs_number_attribute", "not a DICOM attribute keyword")
    quiet = _number(path, raw, "quiet_seconds", 60, 0, 86400)
    max_wait = _number(path, raw, "max_wait_seconds", 3600, 0, 7 * 86400)
    if max_wait < quiet:
        raise _fail(path, "max_wait_seconds", "must be at least quiet_seconds")
    high_water = _number(path, raw, "spool_high_water_bytes", 50 * 1024**3, 1024**2, 2**60)
    max_pdu = _number(path, raw, "max_pdu", 131072, 0, 2**32 - 1)
    deid = raw.get("deidentification", {})
    if not isinstance(deid, dict):
        # its keys are checked by consumers.deid.policy (check-config, the anonymiser and
        # smartbox deidentify all build the policy there)
        raise _fail(path, "deidentification", "a table ([deidentification])")
    workers = raw.get("workers")
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 64
    ):
        raise _fail(path, "workers", "an integer 0-64 (0: SCP inside the receiver process)")
    max_assoc = _number(path, raw, "max_associations", 32, 1, 1000)
    if not float(max_assoc).is_integer():
        raise _fail(path, "max_associations", "an integer 1-1000")
    max_pending = _integer(path, raw, "max_pending_associations", 128, 1, 10000)
    max_pending_address = _integer(path, raw, "max_pending_per_address", 32, 1, 10000)
    artim = _number(path, raw, "artim_seconds", 30, 0.1, 600)
    network_timeout = _number(path, raw, "network_timeout_seconds", 60, 0.1, 3600)
    backfill = raw.get("backfill", False)
    if not isinstance(backfill, bool):
        raise _fail(path, "backfill", "true or false")
    pace_lag = (
        _number(path, raw, "intake_pace_lag_seconds", 0, 0, 86400)
        if "intake_pace_lag_seconds" in raw
        else None
    )
    retrieve = raw.get("retrieve", {})
    if not isinstance(retrieve, dict):
        # its keys are checked by producers.retrieve.config (check-config and smartbox cohort)
        raise _fail(path, "retrieve", "a table ([retrieve])")
    backfill_callers = _str_list(path, raw, "backfill_callers", [])
    for caller in backfill_callers:
        if not AE_TITLE_RE.match(caller):
            raise _fail(path, "backfill_callers", "each a 1-16 character AE title")
    return TrustConfig(
        code=code,
        name=_str(path, raw, "name"),
        ae_title=ae_title,
        port=port,
        allowed_callers=tuple(callers),
        source_file=path,
        nhs_number_attribute=nhs_attr,
        bind_host=_str(path, raw, "bind_host", "0.0.0.0"),  # noqa: S104
        allowed_networks=tuple(networks),
        quiet_seconds=quiet,
        max_wait_seconds=max_wait,
        spool_high_water_bytes=int(high_water),
        max_pdu=int(max_pdu),
        deidentification=dict(deid),
        tls=_parse_tls(path, raw.get("tls")),
        workers=workers,
        max_associations=int(max_assoc),
        max_inflated_bytes=_integer(
            path, raw, "max_inflated_bytes", DEFAULT_MAX_INFLATED_BYTES, 1024**2, 2**40
        ),
        max_inflate_ratio=_number(
            path, raw, "max_inflate_ratio", DEFAULT_MAX_INFLATE_RATIO, 2, 10**6
        ),
        max_pending_associations=max_pending,
        max_pending_per_address=max_pending_address,
        artim_seconds=artim,
        network_timeout_seconds=network_timeout,
        ledger_retention_days=_number(path, raw, "ledger_retention_days", 30, 1, 3650),
        backfill=backfill,
        backfill_callers=tuple(backfill_callers),
        prospective_max_age_days=_number(path, raw, "prospective_max_age_days", 30, 0, 36500),
        retrieve=dict(retrieve),
        announce_chunk_instances=_integer(path, raw, "announce_chunk_instances", 200, 1, 100000),
        intake_pace_lag_seconds=pace_lag,
    )


def tls_files(
    path: Path,
    raw: Mapping[str, Any],
    keys: tuple[str, ...],
    where: str,
    fail: Callable[[Path, str, str], ConfigError],
) -> dict[str, Path | None]:
    """The TLS files a trust file names (relative to the file), each one checked to exist;
    ``fail(path, field, why)`` for one that does not. Used for the receiver's TLS and for the
    cohort process's client TLS towards an archive."""
    files: dict[str, Path | None] = {}
    for key in keys:
        value = raw.get(key)
        if value is None:
            files[key] = None
            continue
        p = (path.parent / str(value)).resolve()
        if not p.is_file():
            raise fail(path, f"{where}{key}", f"file not found: {p}")
        files[key] = p
    return files


def _parse_tls(path: Path, raw: Any) -> TlsConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail(path, "tls", "a table with cert_file, key_file, ca_file, verify_client")
    unknown = sorted(set(raw) - {"cert_file", "key_file", "ca_file", "verify_client"})
    if unknown:
        raise _fail(path, f"tls.{unknown[0]}", "unknown field")
    files = tls_files(path, raw, ("cert_file", "key_file", "ca_file"), "tls.", _fail)
    cert, key_file = files["cert_file"], files["key_file"]
    if cert is None or key_file is None:
        raise _fail(path, "tls", "cert_file and key_file are required")
    verify = raw.get("verify_client", False)
    if not isinstance(verify, bool):
        raise _fail(path, "tls.verify_client", "true or false")
    if verify and files["ca_file"] is None:
        raise _fail(path, "tls.ca_file", "required when verify_client is true")
    return TlsConfig(cert, key_file, files["ca_file"], verify)


def load_trust_file(path: Path) -> TrustConfig:
    """Read and validate one trust file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such trust file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.__class__.__name__}") from None
    return parse_trust(path, raw)


def load_trust(trusts_dir: Path, code: str) -> TrustConfig:
    """Load the trust named by its code from ``trusts_dir/<CODE>.toml``."""
    if not TRUST_CODE_RE.match(code):
        raise ConfigError(f"trust code {code!r}: 2-8 upper-case letters or digits")
    path = trusts_dir / f"{code}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in trusts_dir.glob("*.toml"))) or "none"
        raise ConfigError(f"unknown trust {code}: {path} does not exist (known: {known})")
    return load_trust_file(path)


def load_all_trusts(trusts_dir: Path) -> dict[str, TrustConfig]:
    """Every trust file in a directory, validated; two trusts on one port are an error.

    The directory must exist (``SMARTBOX_TRUSTS_DIR``, default ``trusts`` in the working
    directory). ConfigError lists every bad file, one line each."""
    if not trusts_dir.is_dir():
        raise ConfigError(
            f"SMARTBOX_TRUSTS_DIR: {trusts_dir} does not exist (from {Path.cwd()}): "
            "point it at the folder of trust files"
        )
    trusts: dict[str, TrustConfig] = {}
    problems: list[str] = []
    for path in sorted(trusts_dir.glob("*.toml")):
        try:
            trust = load_trust_file(path)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        for other in trusts.values():
            if other.port and other.port == trust.port:
                clash = _fail(path, "port", f"already used by {other.source_file.name}")
                problems.append(str(clash))
        trusts[trust.code] = trust
    if problems:
        raise ConfigError("\n".join(problems))
    return trusts


class TrustRegistry:
    """Trust files read on demand and re-read when they change.

    Consumers serve every trust, so a new trust (a new file) or a changed profile must take
    effect without restarting them: ``get`` looks the file up by code and re-validates it
    when its modification time changes (a new ``TrustConfig`` object: consumers rebuild what
    they derived from it, e.g. the anonymiser its de-identification policy).
    """

    def __init__(
        self,
        trusts_dir: Path | None,
        *,
        static: dict[str, TrustConfig] | None = None,
    ) -> None:
        self.trusts_dir = trusts_dir
        self._static = dict(static or {})
        self._cache: dict[str, tuple[float, TrustConfig]] = {}

    def get(self, code: str) -> TrustConfig:
        """The trust's current configuration; ConfigError if it has no valid file."""
        if code in self._static:
            return self._static[code]
        if self.trusts_dir is None or not TRUST_CODE_RE.match(code):
            raise ConfigError(f"no trust configuration for {code}")
        path = self.trusts_dir / f"{code}.toml"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            raise ConfigError(f"no trust file for {code} ({path})") from None
        cached = self._cache.get(code)
        if cached and cached[0] == mtime:
            return cached[1]
        trust = load_trust_file(path)
        self._cache[code] = (mtime, trust)
        return trust
