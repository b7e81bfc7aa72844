"""The object-store seam: a narrow protocol, and the local-directory twin used by the demo.

Only S3 semantics are assumed: whole-object put/get, prefix listing, delete; no rename, no
append, no locking. ``S3Store`` (``smartbox.s3``) implements it with the minio client for MinIO
or any S3 server; ``LocalStore`` implements it on a directory, writing atomically (temp file,
fsync, rename, directory fsync) so a crash never leaves a half object visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import NotFound, PermanentError, TransientError

_KEY_RE = re.compile(r"^[A-Za-z0-9_./=-]{1,900}$")


def check_key(key: str) -> str:
    """Object keys are opaque ids joined by '/': no '..', no leading '/', no odd characters."""
    if not _KEY_RE.match(key) or key.startswith("/") or ".." in key.split("/"):
        raise PermanentError("invalid object key")
    return key


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@runtime_checkable
class ObjectStore(Protocol):
    """What smartbox needs from object storage."""

    def ensure_bucket(self, bucket: str) -> None: ...

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        """Store ``data`` durably under ``key`` (overwriting): returns only once durable."""

    def put_file(self, bucket: str, key: str, path: Path) -> None:
        """Store a local file's content under ``key``, streamed (large files stay off the heap)."""

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """Whole object; NotFound if absent."""

    def exists(self, bucket: str, key: str) -> bool: ...

    def size(self, bucket: str, key: str) -> int:
        """Object size in bytes; NotFound if absent."""

    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix``, recursively, in lexical order."""

    def list_entries(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        """(key, size, last-modified unix time) of every object under ``prefix``."""

    def delete(self, bucket: str, key: str) -> None:
        """Delete if present (no error when absent)."""

    def ping(self) -> bool:
        """True when the store answers."""


def put_json(store: ObjectStore, bucket: str, key: str, value: Any) -> bytes:
    """Store ``value`` as canonical JSON; returns the bytes written."""
    data = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    store.put_bytes(bucket, key, data)
    return data


def get_json(store: ObjectStore, bucket: str, key: str) -> Any:
    data = store.get_bytes(bucket, key)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise PermanentError(f"{bucket}/{key}: not JSON") from exc


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class LocalStore:
    """Buckets as directories under ``root``. For ``smartbox demo`` and unit tests."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / check_key(key)

    def _bucket(self, bucket: str) -> Path:
        path = self.root / bucket
        if not path.is_dir():
            raise TransientError(f"bucket {bucket} does not exist")
        return path

    def ensure_bucket(self, bucket: str) -> None:
        (self.root / bucket).mkdir(parents=True, exist_ok=True)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self._bucket(bucket)
        try:
            atomic_write(self._path(bucket, key), data)
        except OSError as exc:
            raise TransientError(f"local store write failed: {exc.strerror}") from exc

    def put_file(self, bucket: str, key: str, path: Path) -> None:
        self.put_bytes(bucket, key, path.read_bytes())

    def get_bytes(self, bucket: str, key: str) -> bytes:
        self._bucket(bucket)
        try:
            return self._path(bucket, key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{bucket}/{key} not found") from None
        except OSError as exc:
            raise TransientError(f"local store read failed: {exc.strerror}") from exc

    def exists(self, bucket: str, key: str) -> bool:
        return self._path(bucket, key).is_file()

    def size(self, bucket: str, key: str) -> int:
        try:
            return self._path(bucket, key).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"{bucket}/{key} not found") from None

    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        base = self._bucket(bucket)
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(base).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def list_entries(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        for key in self.list_keys(bucket, prefix):
            st = self._path(bucket, key).stat()
            yield key, st.st_size, st.st_mtime

    def delete(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)

    def ping(self) -> bool:
        return self.root.is_dir()
