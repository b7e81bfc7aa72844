"""The regional secret and the opaque ids derived from it: the one key loader.

The key is required: without ``SMARTBOX_PSEUDONYM_KEY`` (or a file named by
``SMARTBOX_PSEUDONYM_KEY_FILE``; in the environment or in ``SMARTBOX_SECRETS_FILE``) every
command that derives pseudonyms stops with a ConfigError; there is no default key. The version
(``SMARTBOX_PSEUDONYM_KEY_VERSION``, default ``k1``) is recorded with every output so a
rotation can be told apart.

One rule for every entry point (the anonymiser, ``smartbox deidentify``, ``smartbox withdraw``,
``check-config``): surrounding whitespace (spaces, tabs, a file's trailing newline) is not part
of the key, in the variable and in the file alike; what remains must be at least
``MIN_KEY_BYTES`` bytes. Two loaders with two rules once gave two pseudonyms for one key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .settings import environment

KEY_ENV = "SMARTBOX_PSEUDONYM_KEY"
KEY_FILE_ENV = "SMARTBOX_PSEUDONYM_KEY_FILE"
KEY_VERSION_ENV = "SMARTBOX_PSEUDONYM_KEY_VERSION"
MIN_KEY_BYTES = 16
#: a version label goes into receipts (``KEY k1``) and storage keys: a short plain token
VERSION_RE = re.compile(r"^[A-Za-z0-9._-]{1,16}$")
#: what surrounds a key in a variable or a file and is never part of it
_WHITESPACE = b" \t\r\n\x0b\x0c"


@dataclass(frozen=True)
class RegionalKey:
    """The HMAC secret of a region, with its version. ``repr`` never shows the secret."""

    secret: bytes = field(repr=False)
    version: str = "k1"

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or not self.secret:
            raise ConfigError("pseudonymisation key: the secret must be non-empty bytes")
        if not isinstance(self.version, str) or not VERSION_RE.match(self.version):
            raise ConfigError(f"{KEY_VERSION_ENV}: 1-16 letters, digits, '.', '_' or '-' (e.g. k2)")

    def __repr__(self) -> str:
        return f"RegionalKey(version={self.version!r}, secret=<{len(self.secret)} bytes>)"

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        names: tuple[str, str, str] = (KEY_ENV, KEY_FILE_ENV, KEY_VERSION_ENV),
    ) -> RegionalKey:
        """The key from the environment (and ``SMARTBOX_SECRETS_FILE``), by the one rule.

        ``names``: the variables holding the key, its file and its version (another key
        read by the same rule, e.g. the identity index's, names its own)."""
        env = environment(environ)  # the key may live in the SMARTBOX_SECRETS_FILE
        key_env, file_env, version_env = names
        value = env.get(key_env, "")
        path = env.get(file_env, "")
        if value and path:
            raise ConfigError(f"set only one of {key_env} and {file_env}, not both")
        if path:
            try:
                raw = Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"{file_env}: {path} cannot be read ({exc.strerror or exc})"
                ) from None
        else:
            raw = value.encode("utf-8")
        secret = raw.strip(_WHITESPACE)
        if not secret:
            raise ConfigError(
                f"no pseudonymisation key: set {key_env} or {file_env} (at least "
                f"{MIN_KEY_BYTES} bytes, e.g. from `openssl rand -hex 32`); there is "
                "deliberately no default key"
            )
        if len(secret) < MIN_KEY_BYTES:
            raise ConfigError(
                f"{file_env if path else key_env}: pseudonymisation key too short: "
                f"at least {MIN_KEY_BYTES} bytes"
            )
        version = env.get(version_env, "").strip() or "k1"
        return cls(secret, version)

    def digest(self, domain: str, value: str) -> bytes:
        """HMAC-SHA256 over ``domain:value`` (domains keep derived ids from colliding)."""
        return hmac.new(self.secret, f"{domain}:{value}".encode(), hashlib.sha256).digest()

    def opaque_id(self, domain: str, value: str) -> str:
        """32 hex characters: an id that says nothing about ``value``."""
        return self.digest(domain, value).hex()[:32]
