"""The identity index: identifier -> pseudonym per key version, kept only inside the box.

A pseudonym is an HMAC of an identifier: nothing maps it to the next key's pseudonym without
the identifier, and the box keeps no identifier once quarantine is purged. So the anonymiser
records, for every patient and study it stages, the identifier behind the pseudonym (the HMAC
message: ``patient:nhs:<NHS number>``, ``patient:local:<trust>:<id>``, or the original Study
Instance UID), the pseudonym and the patient's date shift, under the key version in force;
``smartbox rotate-key`` reads it back to map every old pseudonym to the new key's
(``consumers.rotation``).

Where and how (``docs/deidentification.md``, threat model):

* its own bucket (``SMARTBOX_IDENTITY_BUCKET``, default ``identity``), not staging (which the
  exporter copies from) nor a local SQLite file (anonymisers are competing consumers on
  several hosts: each would hold part of the index, and a rotation must see all of it);
* one object per identifier and key version, ``index/<trust>/<kind>/<blind>/<version>.bin``
  (``smartbox.layout``): ``blind`` is an HMAC of the identifier under the index key, so keys
  name nothing and concurrent writers never race (a rewrite says the same thing);
* each object AES-256-GCM encrypted under the index's own key (``SMARTBOX_IDENTITY_INDEX_KEY``
  or ``_FILE``, read by the one key loader's rule), not the pseudonymisation key: a copy of
  the bucket alone, or the regional key alone, reveals nothing; the object key is the
  associated data, so an entry cannot be moved to stand for another identifier.

Without an index key nothing is recorded and a rotation is refused (it would split histories).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from consumers.deid.pseudonyms import Linkage
from smartbox import layout
from smartbox.errors import ConfigError, PermanentError
from smartbox.keys import RegionalKey
from smartbox.settings import environment
from smartbox.store import ObjectStore

KEY_NAMES = (
    "SMARTBOX_IDENTITY_INDEX_KEY",
    "SMARTBOX_IDENTITY_INDEX_KEY_FILE",
    "SMARTBOX_IDENTITY_INDEX_KEY_VERSION",
)
BUCKET_ENV = "SMARTBOX_IDENTITY_BUCKET"
KINDS = ("patient", "study")
_NONCE = 12
_MEMO_MAX = 200_000


@dataclass(frozen=True, repr=False)
class Entry:
    """One identifier's pseudonym under one key version (identifying: never logged)."""

    trust: str
    kind: str
    message: str
    version: str
    pseudonym: str
    date_shift_days: int | None = None

    def __repr__(self) -> str:
        return f"Entry({self.trust}, {self.kind}, version={self.version})"


def entries_of(trust: str, version: str, linkage: Linkage) -> list[Entry]:
    """What one released instance adds to the index: its patient, and its study."""
    out = [
        Entry(
            trust,
            "patient",
            linkage.patient,
            version,
            linkage.patient_pseudonym,
            linkage.date_shift_days,
        )
    ]
    if linkage.study_uid and linkage.study_pseudonym:
        out.append(Entry(trust, "study", linkage.study_uid, version, linkage.study_pseudonym))
    return out


class IdentityIndex:
    """Reads and writes the encrypted index in ``bucket``."""

    def __init__(self, store: ObjectStore, bucket: str, key: RegionalKey) -> None:
        self.store = store
        self.bucket = bucket
        # two keys derived from one secret: one to name entries, one to encrypt them
        self._blind = hmac.new(key.secret, b"identity-index:blind", hashlib.sha256).digest()
        aead = hmac.new(key.secret, b"identity-index:aes-256-gcm", hashlib.sha256).digest()
        self._aead = AESGCM(aead)
        self._written: set[str] = set()
        self._lock = threading.Lock()
        self._ready = False

    @classmethod
    def from_env(
        cls, store: ObjectStore, environ: Mapping[str, str] | None = None
    ) -> IdentityIndex | None:
        """The index configured in the environment; None without an index key."""
        env = environment(environ)
        if not (env.get(KEY_NAMES[0]) or env.get(KEY_NAMES[1])):
            return None
        key = RegionalKey.from_env(env, names=KEY_NAMES)
        return cls(store, env.get(BUCKET_ENV, "identity") or "identity", key)

    def blind(self, kind: str, message: str) -> str:
        """The keyed hash that names an identifier's entries."""
        return hmac.new(self._blind, f"{kind}:{message}".encode(), hashlib.sha256).hexdigest()[:32]

    def _ensure(self) -> None:
        if not self._ready:
            self.store.ensure_bucket(self.bucket)
            self._ready = True

    def key_of(self, entry: Entry) -> str:
        return layout.identity_entry_key(
            entry.trust, entry.kind, self.blind(entry.kind, entry.message), entry.version
        )

    def put(self, entry: Entry) -> None:
        """Write one entry (idempotent; once per process for the same entry)."""
        key = self.key_of(entry)
        with self._lock:
            if key in self._written:
                return
        self._ensure()
        plain = json.dumps(
            {"m": entry.message, "p": entry.pseudonym, "s": entry.date_shift_days},
            separators=(",", ":"),
        ).encode()
        nonce = os.urandom(_NONCE)
        self.store.put_bytes(
            self.bucket, key, nonce + self._aead.encrypt(nonce, plain, key.encode())
        )
        with self._lock:
            if len(self._written) > _MEMO_MAX:
                self._written.clear()
            self._written.add(key)

    def record(self, trust: str, version: str, linkage: Linkage) -> None:
        """Record what one released instance's pseudonyms were made from."""
        for entry in entries_of(trust, version, linkage):
            self.put(entry)

    def get(self, key: str) -> Entry:
        """Decrypt one entry; PermanentError if it does not decrypt under this index key."""
        ref = layout.parse_identity_entry_key(key)
        data = self.store.get_bytes(self.bucket, key)
        try:
            plain = self._aead.decrypt(data[:_NONCE], data[_NONCE:], key.encode())
        except InvalidTag:
            raise PermanentError(
                f"identity index entry {key}: does not decrypt with this index key"
            ) from None
        doc = json.loads(plain)
        return Entry(ref.trust, ref.kind, doc["m"], ref.version, doc["p"], doc.get("s"))

    def trusts(self) -> list[str]:
        """Trusts with entries."""
        self._ensure()
        found = set()
        for key in self.store.list_keys(self.bucket, layout.IDENTITY):
            try:
                found.add(layout.parse_identity_entry_key(key).trust)
            except ValueError:
                continue
        return sorted(found)

    def identities(self, trust: str) -> Iterator[list[Entry]]:
        """Every identifier of ``trust``, with its entries (one per key version)."""
        self._ensure()
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for key in self.store.list_keys(self.bucket, layout.identity_prefix(trust)):
            try:
                ref = layout.parse_identity_entry_key(key)
            except ValueError:
                continue
            groups[(ref.kind, ref.blind)].append(key)
        for _group, keys in sorted(groups.items()):
            yield [self.get(k) for k in sorted(keys)]


def check_env(environ: Mapping[str, str] | None = None) -> None:
    """ConfigError if an index key is configured but unusable (check-config, at start)."""
    env = environment(environ)
    if env.get(KEY_NAMES[0]) or env.get(KEY_NAMES[1]):
        RegionalKey.from_env(env, names=KEY_NAMES)


def require(index: IdentityIndex | None) -> IdentityIndex:
    """The index, or the ConfigError that explains why a rotation cannot keep linkage."""
    if index is None:
        raise ConfigError(
            f"{KEY_NAMES[0]}: no identity index key, so no index was kept: a rotation now "
            "would split every patient's history (set it, then re-process or keep the key)"
        )
    return index
