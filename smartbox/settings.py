"""Process-wide settings from the environment, validated at start: every problem one line.

Read from ``os.environ``, optionally completed by an env-style file named by
``SMARTBOX_SECRETS_FILE`` (the environment wins): broker and storage endpoints and
credentials, bucket names, directories, the export schedule. What a trust is comes from its
trust file instead (``smartbox.trusts``); the two sources are never mixed. Every variable is
listed in ``docs/configuration.md`` (checked against the code by a test). Secrets are held in
fields with ``repr=False`` so they never reach a log line by accident.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import validate
from .errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) plus SMARTBOX_SECRETS_FILE.

        Every value is checked; ConfigError lists every problem found, one line each."""
        settings, problems = cls.parse(environ)
        if problems:
            raise ConfigError("\n".join(problems))
        return settings

    @classmethod
    def parse(cls, environ: Mapping[str, str] | None = None) -> tuple[Settings, list[str]]:
        """Settings and the problems found (one line each); where a value is wrong, the
        settings hold its default so that the remaining checks can still run."""
        env = environment(environ)
        problems: list[str] = []

        def get(key: str, default: str) -> str:
            return env.get(key, default)

        def check(fn: Callable[..., Any], default: Any, *args: Any) -> Any:
            try:
                return fn(*args)
            except ConfigError as exc:
                problems.extend(str(exc).splitlines())
                return default

        def flag(key: str, default: bool) -> bool:
            raw = env.get(key)
            if raw is None:
                return default
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            problems.append(f"environment: {key}: expected true or false")
            return default

        def endpoint(key: str, secure_key: str, default: str) -> str:
            source = f"environment: {key}"
            return str(check(validate.s3_endpoint, default, source, get(key, default), secure_key))

        namespace = get("SMARTBOX_NAMESPACE", "smartbox")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", namespace):
            problems.append("environment: SMARTBOX_NAMESPACE: letters, digits, '_', '.', '-'")
        s3 = S3Settings(
            endpoint=endpoint("SMARTBOX_S3_ENDPOINT", "SMARTBOX_S3_SECURE", "127.0.0.1:9000"),
            access_key=get("SMARTBOX_S3_ACCESS_KEY", "minioadmin"),
            secret_key=get("SMARTBOX_S3_SECRET_KEY", "minioadmin"),
            secure=flag("SMARTBOX_S3_SECURE", False),
            region=env.get("SMARTBOX_S3_REGION"),
        )
        national = S3Settings(
            endpoint=endpoint(
                "SMARTBOX_NATIONAL_S3_ENDPOINT", "SMARTBOX_NATIONAL_S3_SECURE", s3.endpoint
            ),
            access_key=get("SMARTBOX_NATIONAL_S3_ACCESS_KEY", s3.access_key),
            secret_key=get("SMARTBOX_NATIONAL_S3_SECRET_KEY", s3.secret_key),
            secure=flag("SMARTBOX_NATIONAL_S3_SECURE", s3.secure),
            region=env.get("SMARTBOX_NATIONAL_S3_REGION", s3.region or "") or None,
        )
        metrics_port = env.get("SMARTBOX_METRICS_PORT", "0").strip()
        if not metrics_port.isdigit() or not 0 <= int(metrics_port) <= 65535:
            # read by the command line as --metrics-port's default; checked here with the rest
            problems.append("environment: SMARTBOX_METRICS_PORT: an integer 0-65535 (0: any free)")
        prefetch_raw = get("SMARTBOX_PREFETCH", "4")
        if not prefetch_raw.isdigit() or not 1 <= int(prefetch_raw) <= 1000:
            problems.append("environment: SMARTBOX_PREFETCH: an integer 1-1000")
            prefetch_raw = "4"
        default_url = "amqp://guest:guest@127.0.0.1:5672/%2F"
        url = get("SMARTBOX_AMQP_URL", default_url)
        schedule = get("SMARTBOX_EXPORT_SCHEDULE", "0 1 * * *")
        timezone = get("SMARTBOX_EXPORT_TIMEZONE", "Europe/London")
        settings = cls(
            amqp_url=check(validate.amqp_url, default_url, "environment: SMARTBOX_AMQP_URL", url),
            namespace=namespace,
            s3=s3,
            national_s3=national,
            quarantine_bucket=get("SMARTBOX_QUARANTINE_BUCKET", "quarantine"),
            staging_bucket=get("SMARTBOX_STAGING_BUCKET", "staging"),
            national_bucket=get("SMARTBOX_NATIONAL_BUCKET", "national"),
            trusts_dir=Path(get("SMARTBOX_TRUSTS_DIR", "trusts")),
            spool_dir=Path(get("SMARTBOX_SPOOL_DIR", "var/spool")),
            state_dir=Path(get("SMARTBOX_STATE_DIR", "var/state")),
            export_schedule=check(
                validate.cron, "0 1 * * *", "environment: SMARTBOX_EXPORT_SCHEDULE", schedule
            ),
            export_timezone=timezone
            if check(validate.time_zone, None, "environment: SMARTBOX_EXPORT_TIMEZONE", timezone)
            else "Europe/London",
            prefetch=int(prefetch_raw),
        )
        return settings, problems


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default ``os.environ``) completed by the env-style file named by
    ``SMARTBOX_SECRETS_FILE``: what every setting and key is read from (the environment wins)."""
    env = dict(os.environ if environ is None else environ)
    secrets_file = env.get("SMARTBOX_SECRETS_FILE")
    if secrets_file:
        for key, value in read_env_file(Path(secrets_file)).items():
            env.setdefault(key, value)
    return env


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
