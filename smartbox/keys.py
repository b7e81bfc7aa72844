"""The regional secret and the opaque ids derived from it.

The key is required: without ``SMARTBOX_PSEUDONYM_KEY`` (or a file named by
``SMARTBOX_PSEUDONYM_KEY_FILE``) every command that derives ids stops with a ConfigError; there
is no default key. The version (``SMARTBOX_PSEUDONYM_KEY_VERSION``, default ``k1``) is recorded
with every output so a rotation can be told apart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class RegionalKey:
    """The HMAC secret of a region, with its version. ``repr`` never shows the secret."""

    secret: bytes = field(repr=False)
    version: str = "k1"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RegionalKey:
        env = os.environ if environ is None else environ
        raw = env.get("SMARTBOX_PSEUDONYM_KEY")
        path = env.get("SMARTBOX_PSEUDONYM_KEY_FILE")
        if raw is None and path:
            try:
                raw = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"SMARTBOX_PSEUDONYM_KEY_FILE: {path} cannot be read ({exc.strerror})"
                ) from None
        if not raw:
            raise ConfigError(
                "no pseudonymisation key: set SMARTBOX_PSEUDONYM_KEY or SMARTBOX_PSEUDONYM_KEY_FILE"
                " (at least 16 bytes, e.g. from `openssl rand -hex 32`)"
            )
        secret = raw.encode()
        if len(secret) < MIN_KEY_BYTES:
            raise ConfigError(f"pseudonymisation key too short: at least {MIN_KEY_BYTES} bytes")
        version = env.get("SMARTBOX_PSEUDONYM_KEY_VERSION", "k1")
        return cls(secret, version)

    def digest(self, domain: str, value: str) -> bytes:
        """HMAC-SHA256 over ``domain:value`` (domains keep derived ids from colliding)."""
        return hmac.new(self.secret, f"{domain}:{value}".encode(), hashlib.sha256).digest()

    def opaque_id(self, domain: str, value: str) -> str:
        """32 hex characters: an id that says nothing about ``value``."""
        return self.digest(domain, value).hex()[:32]
