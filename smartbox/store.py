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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

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

    def put_bytes(self, bucket: str, key: str, data: bytes, *, sha256: str | None = None) -> None:
        """Store ``data`` durably under ``key`` (overwriting): returns only once durable.
        ``sha256``: the data's digest when the caller has it (not computed again)."""

    def put_file(self, bucket: str, key: str, path: Path, *, sha256: str | None = None) -> None:
        """Store a local file's content under ``key``, streamed (large files stay off the heap).
        ``sha256``: the digest the file had when written, if the caller has it (not computed
        again); the file is stored as it is even if it no longer matches."""

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


def entries_if_bucket(
    store: ObjectStore, bucket: str, prefix: str = ""
) -> list[tuple[str, int, float]]:
    """``store.list_entries`` for a reader (a report, a count), where a bucket not created yet
    means nothing recorded there yet: empty. A missing bucket reads as transient, so the store
    is pinged: if it answers, the bucket is absent; if not, the outage is real and raised."""
    try:
        return list(store.list_entries(bucket, prefix))
    except (NotFound, PermanentError):
        return []
    except TransientError:
        if store.ping():
            return []
        raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_temp(directory: Path, fill: Callable[[BinaryIO], object]) -> Path:
    """A fsync'd temporary file in ``directory`` holding what ``fill`` wrote (the caller
    renames or links it into place; listings skip ``.tmp-`` names)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    tmp = durable_temp(path.parent, lambda f: f.write(data))
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# --- conditional writes and streams: the exporter's lease and copies (smartbox.transfer) -----
def _md5_hex(data: bytes) -> str:
    # the S3 ETag of a single-part object is the MD5 of its bytes: the twin mimics it
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class _LocalConditional:
    """LocalStore's conditional writes: exclusive create by ``link``, compare-and-swap under
    ``flock`` on the bucket directory (works across processes on one host, as the demo needs)."""

    root: Path

    def _path(self, bucket: str, key: str) -> Path:
        raise NotImplementedError

    def put_new(self, bucket: str, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent (S3 ``If-None-Match: *``); False if it exists."""
        path = self._path(bucket, key)
        tmp = durable_temp(path.parent, lambda f: f.write(data))
        try:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            fsync_dir(path.parent)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def get_versioned(self, bucket: str, key: str) -> tuple[bytes, str]:
        """The object's bytes and its ETag (NotFound if absent)."""
        try:
            data = self._path(bucket, key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{bucket}/{key} not found") from None
        return data, _md5_hex(data)

    def put_if_match(self, bucket: str, key: str, data: bytes, etag: str) -> bool:
        """Replace ``key`` only if its ETag is still ``etag`` (S3 ``If-Match``)."""
        import fcntl

        fd = os.open(self.root / bucket, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = self._path(bucket, key).read_bytes()
            except FileNotFoundError:
                return False
            if _md5_hex(current) != etag:
                return False
            atomic_write(self._path(bucket, key), data)
            return True
        finally:
            os.close(fd)  # releases the lock

    def open_read(self, bucket: str, key: str) -> Any:
        """A readable binary stream of the object (close it); NotFound if absent."""
        try:
            return self._path(bucket, key).open("rb")
        except FileNotFoundError:
            raise NotFound(f"{bucket}/{key} not found") from None

    def put_stream(self, bucket: str, key: str, stream: Any, length: int) -> None:
        """Store ``length`` bytes read from ``stream`` in chunks (never whole in memory)."""
        path = self._path(bucket, key)

        def fill(f: BinaryIO) -> None:
            remaining = length
            while remaining > 0:
                chunk = stream.read(min(remaining, 1 << 20))
                if not chunk:
                    raise ValueError("source stream ended early")
                f.write(chunk)
                remaining -= len(chunk)

        tmp = durable_temp(path.parent, fill)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    def iter_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` lazily, directory by directory in name order (a caller that
        needs only the first few does not walk the rest)."""
        base = self.root / bucket
        head, _, _ = prefix.rpartition("/")
        start = base / head if head else base

        def walk(directory: Path) -> Iterator[str]:
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except FileNotFoundError:
                return
            for entry in entries:
                if entry.name.startswith(".tmp-"):
                    continue
                if entry.is_dir():
                    yield from walk(Path(entry.path))
                else:
                    key = Path(entry.path).relative_to(base).as_posix()
                    if key.startswith(prefix):
                        yield key

        yield from walk(start)


class LocalStore(_LocalConditional):
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

    def put_bytes(self, bucket: str, key: str, data: bytes, *, sha256: str | None = None) -> None:
        self._bucket(bucket)
        try:
            atomic_write(self._path(bucket, key), data)
        except OSError as exc:
            raise TransientError(f"local store write failed: {exc.strerror}") from exc

    def put_file(self, bucket: str, key: str, path: Path, *, sha256: str | None = None) -> None:
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


def unanswered(
    store: ObjectStore, bucket: str, prefix: str, *, timeout_seconds: float, now: float
) -> list[dict[str, Any]]:
    """The entries of an outbox (JSON objects under ``prefix``) to send in the next batch:
    never sent (no ``batch_id``), or sent and unanswered for ``timeout_seconds`` (``sent_at``).
    An entry removed meanwhile (answered) is skipped."""
    out = []
    for key in store.list_keys(bucket, prefix):
        try:
            entry: dict[str, Any] = get_json(store, bucket, key)
        except NotFound:
            continue
        if not entry.get("batch_id") or now - entry.get("sent_at", 0) > timeout_seconds:
            out.append(entry)
    return out
