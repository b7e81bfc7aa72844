"""Ed25519 signatures of national batch manifests (``cryptography``).

The box holds the private key (``SMARTBOX_EXPORT_SIGNING_KEY``: 64 hex characters, the 32-byte
seed; or ``SMARTBOX_EXPORT_SIGNING_KEY_FILE``: that hex or a PEM PKCS#8 key); the national side
holds only the public key (``SMARTBOX_EXPORT_VERIFY_KEY`` / ``_FILE``: 64 hex characters or a
PEM SubjectPublicKeyInfo). There is no default key, as for the pseudonymisation key.
``key_id`` (first 16 hex of the sha256 of the raw public key) says which key signed a batch, so
a rotation can be told apart. Why Ed25519 from ``cryptography``: small deterministic signatures,
no parameters to get wrong, and the maintained binding of OpenSSL that every Python stack has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ConfigError
from .settings import environment


def _read(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    path = env.get(f"{name}_FILE")
    if raw is None and path:
        try:
            raw = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: {path} cannot be read ({exc.strerror})") from None
    return raw.strip() if raw else None


def _parse(
    raw: str, pem: Callable[[bytes], object], from_raw: Callable[[bytes], object], what: str
) -> object:
    """A key from PEM text or 64 hex characters (ConfigError naming ``what`` otherwise)."""
    try:
        return pem(raw.encode()) if raw.startswith("-----BEGIN") else from_raw(bytes.fromhex(raw))
    except ValueError:
        raise ConfigError(f"{what}: expected 64 hex characters or a PEM Ed25519 key") from None


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """16 hex characters naming a public key."""
    return hashlib.sha256(_raw_public(public)).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    """Signs manifest bytes. ``repr`` never shows the key."""

    private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> Signer:
        """A throwaway key (the demo)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Signer:
        raw = _read(environment(environ), "SMARTBOX_EXPORT_SIGNING_KEY")
        if not raw:
            raise ConfigError(
                "no export signing key: set SMARTBOX_EXPORT_SIGNING_KEY (64 hex characters, "
                "e.g. from `openssl rand -hex 32`) or SMARTBOX_EXPORT_SIGNING_KEY_FILE"
            )
        pem = partial(serialization.load_pem_private_key, password=None)
        key = _parse(raw, pem, Ed25519PrivateKey.from_private_bytes, "export signing key")
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError("export signing key: not an Ed25519 private key")
        return cls(key)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def public_hex(self) -> str:
        """What the national side configures as SMARTBOX_EXPORT_VERIFY_KEY."""
        return _raw_public(self.public).hex()

    def verifier(self) -> Verifier:
        return Verifier(self.public)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self.private.sign(data)


@dataclass(frozen=True)
class Verifier:
    """Checks manifest signatures with the public key only."""

    public: Ed25519PublicKey

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Verifier:
        raw = _read(environment(environ), "SMARTBOX_EXPORT_VERIFY_KEY")
        if not raw:
            raise ConfigError(
                "no export verification key: set SMARTBOX_EXPORT_VERIFY_KEY (the exporter's "
                "public key, 64 hex characters) or SMARTBOX_EXPORT_VERIFY_KEY_FILE"
            )
        key = _parse(
            raw,
            serialization.load_pem_public_key,
            Ed25519PublicKey.from_public_bytes,
            "export verification key",
        )
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError("export verification key: not an Ed25519 public key")
        return cls(key)

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def verify(self, data: bytes, signature: bytes) -> bool:
        """True only if ``signature`` is this key's signature of exactly ``data``."""
        try:
            self.public.verify(signature, data)
        except InvalidSignature:
            return False
        return True
