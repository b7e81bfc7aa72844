"""``ObjectStore`` on S3 (MinIO in production; any S3 server) through the minio client.

Strictly the S3 API: no MinIO admin calls. Errors are translated here: connection failures,
timeouts, throttling and 5xx become TransientError; a missing key NotFound; credentials or
permission problems TransientError too (an operator fixes them; the work must wait, not be
dead-lettered), with the S3 error code in the message and nothing else from the request.
"""

from __future__ import annotations

import inspect
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from .errors import NotFound, PermanentError, TransientError
from .settings import S3Settings
from .store import check_key

T = TypeVar("T")
_MISSING = {"NoSuchKey", "NoSuchObject"}
#: the server checked the signed payload digest and the body differs (MinIO, AWS)
_DIGEST_REFUSED = {"XAmzContentSHA256Mismatch", "BadDigest"}
_PART = 16 * 1024 * 1024


#: a request header the client below takes out again: the payload's SHA-256, known already
_KNOWN_SHA256 = "x-smartbox-known-sha256"


class _Client(Minio):
    """The minio client, told the payload's SHA-256 when the caller has it already.

    Over plain HTTP, SigV4 signs the payload's SHA-256 and minio hashes every body itself;
    the receiver (ledger) and the anonymiser (object key) have just computed that digest, so
    a 0.5 MB instance was hashed twice. With the known digest the body is not hashed again;
    MinIO and AWS check it against the bytes (a mismatch is refused, never stored; SeaweedFS,
    the test server, does not check), so the digest must be of these bytes. Only
    for bytes in memory whose digest was just taken (the anonymiser's output): a spool file
    is uploaded as it is on disk, so that a file damaged since intake still reaches quarantine
    and is held back by the anonymiser's verified read instead of blocking its study.
    Relies on ``Minio._build_headers`` (minio 7.2); the S3 integration tests exercise it.
    """

    def _build_headers(
        self, host: str, headers: Any = None, body: bytes | None = None, creds: Any = None
    ) -> Any:
        known = (headers or {}).pop(_KNOWN_SHA256, None)
        if known is None or body is None:
            return super()._build_headers(host, headers, body, creds)
        headers, date = super()._build_headers(host, headers, None, creds)
        headers["Content-Length"] = str(len(body))
        if headers.get("x-amz-content-sha256") not in (None, "UNSIGNED-PAYLOAD"):
            headers["x-amz-content-sha256"] = known  # the signed payload hash
        return headers, date


def _known_digest_supported() -> bool:
    """Whether this minio has the two private methods ``_Client`` relies on, with the
    parameters it passes; otherwise ``put_bytes`` takes the public path (the body hashed
    again by minio: slower, same result), so a minio release that changes them costs speed,
    not uploads (``tests/integration/test_s3_known_digest.py`` fails if the pin loses it)."""
    try:
        build = list(inspect.signature(Minio._build_headers).parameters)
        put = list(inspect.signature(Minio._put_object).parameters)
    except (AttributeError, TypeError, ValueError):
        return False
    build_ok = build[:5] == ["self", "host", "headers", "body", "creds"]
    put_ok = put[:4] == ["self", "bucket_name", "object_name", "data"] and "headers" in put
    return build_ok and put_ok


KNOWN_DIGEST = _known_digest_supported()


def _known_headers(sha256: str) -> dict[str, str | list[str] | tuple[str]]:
    """A fresh header dict for ``_Client`` (which takes the digest out of it)."""
    return {_KNOWN_SHA256: sha256, "Content-Type": "application/octet-stream"}


class S3Store:
    """The production object store."""

    def __init__(self, settings: S3Settings, *, timeout: float = 30.0) -> None:
        self.endpoint = settings.endpoint
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=timeout),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(502, 503, 504)),
            maxsize=16,
        )
        self._client = _Client(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except S3Error as exc:
            if exc.code in _MISSING:
                raise NotFound(f"{what}: not found") from exc
            if exc.code in {"NoSuchBucket"}:
                raise TransientError(f"{what}: bucket missing ({exc.code})") from exc
            if exc.code in {"InvalidBucketName", "KeyTooLongError"}:
                raise PermanentError(f"{what}: {exc.code}") from exc
            raise TransientError(f"{what}: S3 error {exc.code}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"{what}: {self._unavailable(exc)}") from exc

    def _unavailable(self, exc: BaseException) -> str:
        """What an operator reads when the server cannot be reached: which setting names it."""
        name = type(exc).__name__
        return f"S3 endpoint {self.endpoint} (SMARTBOX_S3_ENDPOINT) unavailable ({name})"

    def ensure_bucket(self, bucket: str) -> None:
        def run() -> None:
            if not self._client.bucket_exists(bucket):
                try:
                    self._client.make_bucket(bucket)
                except S3Error as exc:
                    if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                        raise

        self._call(f"ensure bucket {bucket}", run)

    def put_bytes(self, bucket: str, key: str, data: bytes, *, sha256: str | None = None) -> None:
        check_key(key)
        if sha256 is not None and KNOWN_DIGEST and len(data) <= _PART:  # not hashed again
            self._put_known(bucket, key, data, sha256)
            return
        self._call(
            f"put {bucket}/{key}",
            lambda: self._client.put_object(bucket, key, io.BytesIO(data), len(data)),
        )

    def put_file(self, bucket: str, key: str, path: Path, *, sha256: str | None = None) -> None:
        """``sha256``: the digest the file had when it was written (the receiver's ledger),
        signed as the payload hash instead of hashing the file again. A server that checks it
        (MinIO, AWS) refuses a file damaged since; it is then sent again as it is (hashed by
        minio), so a damaged spool file still reaches quarantine, where the anonymiser's
        verified read holds it back instead of its study waiting for it."""
        check_key(key)

        def run() -> None:
            if sha256 is None or not KNOWN_DIGEST or os.stat(path).st_size > _PART:
                # streamed, hashed by minio (a multipart upload hashes each part)
                self._client.fput_object(bucket, key, str(path), part_size=_PART)
                return
            data = path.read_bytes()
            try:
                self._client._put_object(bucket, key, data, headers=_known_headers(sha256))
            except S3Error as exc:
                if exc.code not in _DIGEST_REFUSED:
                    raise
                self._client.put_object(bucket, key, io.BytesIO(data), len(data))

        self._call(f"put {bucket}/{key}", run)

    def _put_known(self, bucket: str, key: str, data: bytes, sha256: str) -> None:
        self._call(
            f"put {bucket}/{key}",
            lambda: self._client._put_object(bucket, key, data, headers=_known_headers(sha256)),
        )

    def get_bytes(self, bucket: str, key: str) -> bytes:
        check_key(key)

        def run() -> bytes:
            response = self._client.get_object(bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call(f"get {bucket}/{key}", run)

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.size(bucket, key)
        except NotFound:
            return False
        return True

    def size(self, bucket: str, key: str) -> int:
        check_key(key)
        stat = self._call(f"stat {bucket}/{key}", lambda: self._client.stat_object(bucket, key))
        return int(stat.size or 0)

    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        objects = self._call(
            f"list {bucket}/{prefix}",
            lambda: list(self._client.list_objects(bucket, prefix=prefix, recursive=True)),
        )
        yield from sorted(str(o.object_name) for o in objects if not o.is_dir)

    def list_entries(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        objects = self._call(
            f"list {bucket}/{prefix}",
            lambda: list(self._client.list_objects(bucket, prefix=prefix, recursive=True)),
        )
        entries = [
            (
                str(o.object_name),
                int(o.size or 0),
                o.last_modified.timestamp() if o.last_modified else 0.0,
            )
            for o in objects
            if not o.is_dir
        ]
        yield from sorted(entries)

    def delete(self, bucket: str, key: str) -> None:
        check_key(key)
        self._call(f"delete {bucket}/{key}", lambda: self._client.remove_object(bucket, key))

    def ping(self) -> bool:
        try:
            self._client.list_buckets()
        except (MinioException, urllib3.exceptions.HTTPError, OSError):
            return False
        return True

    # --- conditional writes and streams (the exporter's lease and copies) ------------------
    # S3 conditional writes: PutObject with If-None-Match: * (create only if absent) and
    # If-Match: <etag> (compare-and-swap). AWS S3, MinIO and SeaweedFS 4.x answer 412
    # PreconditionFailed (AWS may also answer 409 ConditionalRequestConflict to a racing
    # writer). The minio client sends extra headers only through its low-level _put_object.
    def _put_conditional(
        self, bucket: str, key: str, data: bytes, condition: dict[str, str]
    ) -> bool:
        check_key(key)

        def run() -> bool:
            try:
                self._client._put_object(
                    bucket, key, data, headers={**condition, "Content-Type": "application/json"}
                )
            except S3Error as exc:
                if exc.code in {"PreconditionFailed", "ConditionalRequestConflict"}:
                    return False
                raise
            return True

        return self._call(f"conditional put {bucket}/{key}", run)

    def put_new(self, bucket: str, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent (``If-None-Match: *``); False if it exists."""
        return self._put_conditional(bucket, key, data, {"If-None-Match": "*"})

    def put_if_match(self, bucket: str, key: str, data: bytes, etag: str) -> bool:
        """Replace ``key`` only if its ETag is still ``etag`` (``If-Match``)."""
        return self._put_conditional(bucket, key, data, {"If-Match": f'"{etag}"'})

    def get_versioned(self, bucket: str, key: str) -> tuple[bytes, str]:
        """The object's bytes and its ETag (NotFound if absent)."""
        check_key(key)

        def run() -> tuple[bytes, str]:
            response = self._client.get_object(bucket, key)
            try:
                return response.read(), str(response.headers.get("ETag", "")).strip('"')
            finally:
                response.close()
                response.release_conn()

        return self._call(f"get {bucket}/{key}", run)

    def open_read(self, bucket: str, key: str) -> Any:
        """A readable stream of the object (close it); NotFound if absent."""
        check_key(key)
        return self._call(f"get {bucket}/{key}", lambda: self._client.get_object(bucket, key))

    def put_stream(self, bucket: str, key: str, stream: Any, length: int) -> None:
        """Upload ``length`` bytes from ``stream``; the client buffers one part at a time."""
        check_key(key)
        self._call(
            f"put {bucket}/{key}",
            lambda: self._client.put_object(bucket, key, stream, length, part_size=_PART),
        )

    def iter_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` lazily, page by page (S3 lists in key order)."""
        try:
            for obj in self._client.list_objects(bucket, prefix=prefix, recursive=True):
                if not obj.is_dir:
                    yield str(obj.object_name)
        except S3Error as exc:
            raise TransientError(f"list {bucket}/{prefix}: S3 error {exc.code}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"list {bucket}/{prefix}: {self._unavailable(exc)}") from exc
