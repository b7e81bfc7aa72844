"""Validators of environment and command-line values: one per kind, used by every entry point.

Each takes where the value came from (``environment: SMARTBOX_AMQP_URL``, ``--log-level``) and
the raw text, returns the parsed value, and raises ``ConfigError`` with one line that names the
source and says what to write instead. Where the client library that will use the value has
its own parser (pika, minio), that parser runs too, so a value accepted here cannot crash the
process later. A value that may carry a secret (the broker URL holds a password) is never
echoed back.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def broker_urls(value: str) -> list[str]:
    """The broker URLs in ``SMARTBOX_AMQP_URL``: one, or several separated by commas (the
    nodes of a RabbitMQ cluster, tried in the order given). A comma inside a password is
    written ``%2C``, as any URL would need."""
    return [part.strip() for part in value.split(",") if part.strip()]


def amqp_url(source: str, value: str) -> str:
    """A broker URL ``amqp[s]://USER:PASSWORD@HOST:PORT/VHOST``, or several separated by
    commas (a cluster); each is checked and the one at fault named by its position."""
    urls = broker_urls(value)
    if not urls:
        raise ConfigError(f"{source}: empty; expected amqp://USER:PASSWORD@HOST:PORT/VHOST")
    for n, url in enumerate(urls, 1):
        _one_amqp_url(f"{source} (URL {n} of {len(urls)})" if len(urls) > 1 else source, url)
    return ",".join(urls)


def _one_amqp_url(source: str, value: str) -> None:
    shape = "expected amqp://USER:PASSWORD@HOST:PORT/VHOST (or amqps://)"
    parts = urlsplit(value)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigError(f"{source}: {shape}")
    try:
        parts.port  # noqa: B018 - urllib parses the port lazily, raising on a bad one
    except ValueError:
        raise ConfigError(f"{source}: the port is not a number 0-65535; {shape}") from None
    if not parts.hostname:
        raise ConfigError(f"{source}: no host; {shape}")
    import pika

    try:
        pika.URLParameters(value)
    except Exception:  # noqa: BLE001 - pika raises ValueError, TypeError, KeyError alike
        raise ConfigError(f"{source}: the broker client cannot use it (query options?)") from None


def s3_endpoint(source: str, value: str, secure_variable: str) -> str:
    """An S3 endpoint ``HOST[:PORT]``: no scheme (TLS is ``secure_variable``), no path."""
    raw = value.strip()
    if "://" in raw:
        scheme = raw.split("://", 1)[0]
        raise ConfigError(
            f"{source}: HOST:PORT without a scheme (found {scheme}://); "
            f"for https set {secure_variable}=true"
        )
    if "@" in raw:
        raise ConfigError(f"{source}: HOST:PORT; credentials go in the _ACCESS_KEY/_SECRET_KEY")
    parts = urlsplit(f"//{raw}")
    if not parts.hostname or parts.path or parts.query or parts.fragment:
        raise ConfigError(f"{source}: HOST:PORT expected, found {raw!r}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"{source}: the port of {raw!r} is not a number 1-65535")
    from minio.helpers import BaseURL

    try:
        BaseURL(f"http://{raw}", None)  # exactly what the S3 client will do with it
    except ValueError as exc:
        raise ConfigError(f"{source}: the S3 client refuses {raw!r} ({exc})") from None
    return raw


def cron(source: str, value: str) -> str:
    """A cron expression (minute hour day-of-month month day-of-week)."""
    from croniter import croniter

    if not croniter.is_valid(value):
        raise ConfigError(
            f"{source}: {value!r} is not a cron expression "
            "(minute hour day month weekday, e.g. '0 1 * * *')"
        )
    return value


def time_zone(source: str, value: str) -> ZoneInfo:
    """An IANA time zone name."""
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{source}: {value!r} is not a time zone (an IANA name such as 'Europe/London')"
        ) from None


def log_level(source: str, value: str) -> str:
    """A ``logging`` level name, in any case."""
    name = value.strip().upper()
    if name not in LOG_LEVELS or not isinstance(logging.getLevelName(name), int):
        raise ConfigError(f"{source} {value!r}: expected one of {', '.join(LOG_LEVELS)}")
    return name
