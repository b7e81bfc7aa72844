"""A lease in object storage, taken by a conditional write: one export pass at a time.

The lease is one small object. It is created with ``If-None-Match: *`` (only one writer can
create it) and replaced with ``If-Match: <etag>`` (only the writer that read the current version
can replace it), so taking, renewing and taking over an expired lease are all compare-and-swap
operations the S3 server arbitrates; no clock or lock server of ours is involved. A holder that
dies is detected by expiry (``ttl``) or, on the same host, by its process id no longer running
(so a restart after SIGKILL does not wait for the expiry).

What it needs from the server: conditional PutObject (``If-None-Match`` and ``If-Match``,
answering 412). AWS S3 has both since 2024; MinIO and SeaweedFS 4.x implement them (the
integration tests run against SeaweedFS). ``LocalStore`` mimics them with ``link`` and ``flock``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Protocol

from .errors import NotFound, SmartboxError

log = logging.getLogger(__name__)


class LeaseLost(SmartboxError):
    """Another holder took the lease over (ours had expired): stop before the next step."""


class ConditionalStore(Protocol):
    """The conditional writes a lease needs (``LocalStore`` and ``S3Store`` both have them)."""

    def put_new(self, bucket: str, key: str, data: bytes) -> bool: ...

    def put_if_match(self, bucket: str, key: str, data: bytes, etag: str) -> bool: ...

    def get_versioned(self, bucket: str, key: str) -> tuple[bytes, str]: ...


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """One holder at a time for ``key`` in ``bucket``; renew it more often than ``ttl``."""

    def __init__(self, store: ConditionalStore, bucket: str, key: str, *, ttl: float = 120.0):
        self.store = store
        self.bucket = bucket
        self.key = key
        self.ttl = ttl
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._etag: str | None = None
        self.holder: dict[str, Any] | None = None  # who holds it, when we could not take it

    def _body(self, expires_at: float, *, released: bool = False) -> bytes:
        return json.dumps(
            {
                "released": released,
                "owner": self.owner,
                "host": self.host,
                "pid": os.getpid(),
                "expires_at": expires_at,
                "renewed_at": time.time(),
            },
            sort_keys=True,
        ).encode()

    @staticmethod
    def _etag_of(data: bytes) -> str:
        # a single-part PUT's ETag is the MD5 of its bytes (S3, MinIO, SeaweedFS, LocalStore)
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def _stale(self, current: dict[str, Any]) -> bool:
        if float(current.get("expires_at", 0)) <= time.time():
            return True
        pid = current.get("pid")
        return current.get("host") == self.host and isinstance(pid, int) and not _pid_alive(pid)

    def acquire(self) -> bool:
        """Take the lease if it is free, expired or its holder is dead; False if held."""
        body = self._body(time.time() + self.ttl)
        if self.store.put_new(self.bucket, self.key, body):
            self._etag = self._etag_of(body)
            return True
        try:
            raw, etag = self.store.get_versioned(self.bucket, self.key)
        except NotFound:
            return self.acquire()  # released between our two calls: try to create it again
        try:
            current = json.loads(raw)
        except ValueError:
            current = {}
        if not self._stale(current):
            self.holder = current
            return False
        if self.store.put_if_match(self.bucket, self.key, body, etag):
            if not current.get("released"):
                log.warning("lease taken over from %s (expired or dead)", current.get("owner"))
            self._etag = self._etag_of(body)
            return True
        raw, _ = self.store.get_versioned(self.bucket, self.key)
        self.holder = json.loads(raw)
        return False

    def renew(self) -> None:
        """Extend the lease; LeaseLost if someone else holds it now."""
        if self._etag is None:
            raise LeaseLost("lease not held")
        body = self._body(time.time() + self.ttl)
        if not self.store.put_if_match(self.bucket, self.key, body, self._etag):
            self._etag = None
            raise LeaseLost("export lease lost to another pass")
        self._etag = self._etag_of(body)

    def release(self) -> None:
        """Give the lease up (an expired lease, written only if it is still ours)."""
        if self._etag is None:
            return
        body = self._body(0.0, released=True)
        self.store.put_if_match(self.bucket, self.key, body, self._etag)
        self._etag = None
