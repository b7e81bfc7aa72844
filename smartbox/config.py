"""Typed settings, validated at start, failing fast with the file and field named.

Two sources, never mixed:

* **Trust files** (``trusts/<CODE>.toml``): what a trust is — AE title, port, who may call,
  which attribute holds the NHS number, study-completion timing, profile options. No secrets.
* **Environment** (optionally completed by an env-style file named by ``SMARTBOX_SECRETS_FILE``):
  broker and storage endpoints and credentials, the pseudonymisation key, directories.

Secrets are held in fields with ``repr=False`` so they never reach a log line by accident.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

TRUST_CODE_RE = re.compile(r"^[A-Z0-9]{2,8}$")
AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII except backslash
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

#: The ten option columns of PS3.15 Table E.1-1 (as named in the Annex E table data)
DEID_OPTION_COLUMNS: tuple[str, ...] = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_longitudinal_full_dates",
    "retain_longitudinal_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
)
KNOWN_DEID_OPTIONS = frozenset(DEID_OPTION_COLUMNS)
#: Basic Profile + Retain Longitudinal Temporal Information with Modified Dates
#: + Retain Patient Characteristics
DEFAULT_DEID_OPTIONS = frozenset(
    {"retain_longitudinal_modified_dates", "retain_patient_characteristics"}
)


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
    deid_options: frozenset[str] = DEFAULT_DEID_OPTIONS
    #: False when the trust file names no options: the deployment default applies
    deid_options_explicit: bool = False
    #: consumers.deid MaskRule objects: pixel regions to blank for known devices
    deid_mask_rules: tuple[Any, ...] = ()
    deid_ocr: bool = False
    deid_ocr_scope: str = "masked"
    deid_ocr_match: str = "identifiers"
    tls: TlsConfig | None = None
    workers: int | None = None  # SCP worker processes; None: one per CPU (max 4); 0: in-process
    max_associations: int = 32  # concurrent associations per SCP worker process

    def caller_allowed(self, calling_ae: str, address: str | None) -> tuple[bool, str]:
        """Whether a calling AE title (and source address) may associate; and why not."""
        if "*" not in self.allowed_callers and calling_ae.strip() not in self.allowed_callers:
            return False, "calling_ae"
        if self.allowed_networks and address is not None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False, "source_address"
            if not any(ip in ipaddress.ip_network(n, strict=False) for n in self.allowed_networks):
                return False, "source_address"
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
    deid_keys = {"options", "mask_rules", "ocr", "ocr_scope", "ocr_match"}
    if not isinstance(deid, dict) or set(deid) - deid_keys:
        raise _fail(path, "deidentification", f"a table with only {sorted(deid_keys)}")
    mask_rules: tuple[Any, ...] = ()
    if "mask_rules" in deid:
        from consumers.deid.config import DeidConfigError, mask_rules_from_toml

        try:
            mask_rules = mask_rules_from_toml(deid["mask_rules"])
        except DeidConfigError as exc:
            raise ConfigError(f"{path}: field {exc}") from None
    ocr = deid.get("ocr", False)
    if not isinstance(ocr, bool):
        raise _fail(path, "deidentification.ocr", "true or false")
    ocr_scope = deid.get("ocr_scope", "masked")
    if ocr_scope not in ("masked", "all"):
        raise _fail(path, "deidentification.ocr_scope", "'masked' or 'all'")
    ocr_match = deid.get("ocr_match", "identifiers")
    if ocr_match not in ("identifiers", "any_text"):
        raise _fail(path, "deidentification.ocr_match", "'identifiers' or 'any_text'")
    options = frozenset(_str_list(path, deid, "options", sorted(DEFAULT_DEID_OPTIONS)))
    bad = sorted(options - KNOWN_DEID_OPTIONS)
    if bad:
        raise _fail(path, "deidentification.options", f"unknown option {bad[0]!r}")
    workers = raw.get("workers")
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 64
    ):
        raise _fail(path, "workers", "an integer 0-64 (0: SCP inside the receiver process)")
    max_assoc = _number(path, raw, "max_associations", 32, 1, 1000)
    if not float(max_assoc).is_integer():
        raise _fail(path, "max_associations", "an integer 1-1000")
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
        deid_options=options,
        deid_options_explicit="options" in deid,
        deid_mask_rules=mask_rules,
        deid_ocr=ocr,
        deid_ocr_scope=ocr_scope,
        deid_ocr_match=ocr_match,
        tls=_parse_tls(path, raw.get("tls")),
        workers=workers,
        max_associations=int(max_assoc),
    )


def _parse_tls(path: Path, raw: Any) -> TlsConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail(path, "tls", "a table with cert_file, key_file, ca_file, verify_client")
    unknown = sorted(set(raw) - {"cert_file", "key_file", "ca_file", "verify_client"})
    if unknown:
        raise _fail(path, f"tls.{unknown[0]}", "unknown field")
    files: dict[str, Path | None] = {}
    for key in ("cert_file", "key_file", "ca_file"):
        value = raw.get(key)
        if value is None:
            files[key] = None
            continue
        p = (path.parent / str(value)).resolve()
        if not p.is_file():
            raise _fail(path, f"tls.{key}", f"file not found: {p}")
        files[key] = p
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
    """Every trust file in a directory, validated; duplicate AE titles or ports are errors."""
    trusts: dict[str, TrustConfig] = {}
    for path in sorted(trusts_dir.glob("*.toml")):
        trust = load_trust_file(path)
        for other in trusts.values():
            if other.port and other.port == trust.port:
                raise _fail(path, "port", f"already used by {other.source_file.name}")
        trusts[trust.code] = trust
    return trusts


@dataclass(frozen=True)
class S3Settings:
    """One S3 endpoint and its credentials."""

    endpoint: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    secure: bool = False
    region: str | None = None


@dataclass(frozen=True)
class Settings:
    """Process-wide settings from the environment (and the secrets file)."""

    amqp_url: str = field(repr=False)
    namespace: str
    s3: S3Settings
    national_s3: S3Settings
    quarantine_bucket: str
    staging_bucket: str
    national_bucket: str
    trusts_dir: Path
    spool_dir: Path
    state_dir: Path
    export_schedule: str
    export_timezone: str
    prefetch: int
    deid_options: frozenset[str] = DEFAULT_DEID_OPTIONS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) plus SMARTBOX_SECRETS_FILE."""
        env = dict(os.environ if environ is None else environ)
        secrets_file = env.get("SMARTBOX_SECRETS_FILE")
        if secrets_file:
            for key, value in read_env_file(Path(secrets_file)).items():
                env.setdefault(key, value)

        def get(key: str, default: str) -> str:
            return env.get(key, default)

        def flag(key: str, default: bool) -> bool:
            raw = env.get(key)
            if raw is None:
                return default
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ConfigError(f"environment: {key}: expected true or false")

        namespace = get("SMARTBOX_NAMESPACE", "smartbox")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", namespace):
            raise ConfigError("environment: SMARTBOX_NAMESPACE: letters, digits, '_', '.', '-'")
        s3 = S3Settings(
            endpoint=get("SMARTBOX_S3_ENDPOINT", "127.0.0.1:9000"),
            access_key=get("SMARTBOX_S3_ACCESS_KEY", "minioadmin"),
            secret_key=get("SMARTBOX_S3_SECRET_KEY", "minioadmin"),
            secure=flag("SMARTBOX_S3_SECURE", False),
            region=env.get("SMARTBOX_S3_REGION"),
        )
        national = S3Settings(
            endpoint=get("SMARTBOX_NATIONAL_S3_ENDPOINT", s3.endpoint),
            access_key=get("SMARTBOX_NATIONAL_S3_ACCESS_KEY", s3.access_key),
            secret_key=get("SMARTBOX_NATIONAL_S3_SECRET_KEY", s3.secret_key),
            secure=flag("SMARTBOX_NATIONAL_S3_SECURE", s3.secure),
            region=env.get("SMARTBOX_NATIONAL_S3_REGION", s3.region or "") or None,
        )
        prefetch_raw = get("SMARTBOX_PREFETCH", "4")
        if not prefetch_raw.isdigit() or not 1 <= int(prefetch_raw) <= 1000:
            raise ConfigError("environment: SMARTBOX_PREFETCH: an integer 1-1000")
        raw_options = env.get("SMARTBOX_DEID_OPTIONS")
        deid_options = DEFAULT_DEID_OPTIONS
        if raw_options is not None:
            deid_options = frozenset(o.strip() for o in raw_options.split(",") if o.strip())
            unknown = sorted(deid_options - KNOWN_DEID_OPTIONS)
            if unknown:
                raise ConfigError(
                    f"environment: SMARTBOX_DEID_OPTIONS: unknown option {unknown[0]!r}"
                )
        return cls(
            amqp_url=get("SMARTBOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
            namespace=namespace,
            s3=s3,
            national_s3=national,
            quarantine_bucket=get("SMARTBOX_QUARANTINE_BUCKET", "quarantine"),
            staging_bucket=get("SMARTBOX_STAGING_BUCKET", "staging"),
            national_bucket=get("SMARTBOX_NATIONAL_BUCKET", "national"),
            trusts_dir=Path(get("SMARTBOX_TRUSTS_DIR", "trusts")),
            spool_dir=Path(get("SMARTBOX_SPOOL_DIR", "var/spool")),
            state_dir=Path(get("SMARTBOX_STATE_DIR", "var/state")),
            export_schedule=get("SMARTBOX_EXPORT_SCHEDULE", "0 1 * * *"),
            export_timezone=get("SMARTBOX_EXPORT_TIMEZONE", "Europe/London"),
            prefetch=int(prefetch_raw),
            deid_options=deid_options,
        )


def read_env_file(path: Path) -> dict[str, str]:
    """Parse an env-style file (KEY=VALUE lines, # comments, optional quotes)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: secrets file cannot be read: {exc.strerror}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ConfigError(f"{path}: line {number}: expected KEY=VALUE")
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


class TrustRegistry:
    """Trust files read on demand and re-read when they change.

    Consumers serve every trust, so a new trust (a new file) or a changed profile must take
    effect without restarting them: ``get`` looks the file up by code and re-validates it
    when its modification time changes.
    """

    def __init__(
        self,
        trusts_dir: Path | None,
        *,
        default_options: frozenset[str] = DEFAULT_DEID_OPTIONS,
        static: dict[str, TrustConfig] | None = None,
    ) -> None:
        self.trusts_dir = trusts_dir
        self.default_options = default_options
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
        if not trust.deid_options_explicit:
            trust = replace(trust, deid_options=self.default_options)
        self._cache[code] = (mtime, trust)
        return trust
