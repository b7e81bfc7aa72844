"""Verified reads and streamed, verified copies between object stores.

Every read of an object whose sha256 is recorded in a manifest goes through ``read_verified``
(one place decides what a mismatch is); ``copy_verified`` streams an object from one store to
another in chunks, hashing on the way, so a large instance is never whole in memory. A store
without streams (a test double) falls back to whole-object reads.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol, runtime_checkable

from .errors import NotFound, PermanentError
from .store import ObjectStore


class BadObject(PermanentError):
    """A stored object is missing or does not match its manifest; ``reason`` says which."""

    def __init__(self, reason: str, what: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.reason = reason


@runtime_checkable
class StreamingStore(Protocol):
    def open_read(self, bucket: str, key: str) -> Any: ...

    def put_stream(self, bucket: str, key: str, stream: Any, length: int) -> None: ...


def read_verified(store: ObjectStore, bucket: str, key: str, sha256: str) -> bytes:
    """The object's bytes, only if they hash to ``sha256`` (BadObject otherwise)."""
    try:
        data = store.get_bytes(bucket, key)
    except NotFound:
        raise BadObject("object_missing", f"{bucket}/{key}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise BadObject("checksum_mismatch", f"{bucket}/{key}")
    return data


class _HashingReader:
    """Reads through to ``raw`` and hashes what passes."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        chunk: bytes = self.raw.read(n)
        self.sha.update(chunk)
        self.count += len(chunk)
        return chunk


def _length(stream: Any) -> int | None:
    """The source's length if the stream knows it (HTTP Content-Length, a file's size)."""
    headers = getattr(stream, "headers", None)
    if headers is not None and headers.get("Content-Length") is not None:
        return int(headers["Content-Length"])
    fileno = getattr(stream, "fileno", None)
    if fileno is not None:
        import os

        return os.fstat(fileno()).st_size
    return None


def copy_verified(
    src: ObjectStore,
    src_bucket: str,
    dst: ObjectStore,
    dst_bucket: str,
    key: str,
    sha256: str,
    size: int,
) -> None:
    """Copy ``key`` from ``src`` to ``dst`` streamed; BadObject (and nothing left at the
    destination) if the source is missing, short, or does not hash to ``sha256``."""
    what = f"{src_bucket}/{key}"
    if not (isinstance(src, StreamingStore) and isinstance(dst, StreamingStore)):
        dst.put_bytes(dst_bucket, key, read_verified(src, src_bucket, key, sha256))
        return
    try:
        stream = src.open_read(src_bucket, key)
    except NotFound:
        raise BadObject("object_missing", what) from None
    reader = _HashingReader(stream)
    try:
        if _length(stream) not in (None, size):
            raise BadObject("size_mismatch", what)
        dst.put_stream(dst_bucket, key, reader, size)
        extra = stream.read(1)
    finally:
        stream.close()
        release = getattr(stream, "release_conn", None)
        if release:
            release()
    if extra or reader.count != size:
        dst.delete(dst_bucket, key)
        raise BadObject("size_mismatch", what)
    if reader.sha.hexdigest() != sha256:
        dst.delete(dst_bucket, key)
        raise BadObject("checksum_mismatch", what)
