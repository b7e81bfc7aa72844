"""The uploads with the payload digest the caller already has (the anonymiser's
``put_bytes(sha256=...)``, the relay's ``put_file(sha256=...)``) against a real S3 server:
stored byte for byte, and the public fallback (taken when minio's private methods change)
storing the same. (Whether the server refuses a body that does not
match the signed digest is the server's: MinIO and AWS do; SeaweedFS, measured here, does not.)"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from minio.error import S3Error

from smartbox import s3
from smartbox.s3 import S3Store
from smartbox.settings import S3Settings


@pytest.fixture
def store(s3_server) -> S3Store:  # type: ignore[no-untyped-def]
    st = S3Store(S3Settings(s3_server.endpoint, s3_server.access_key, s3_server.secret_key))
    st.ensure_bucket("digest")
    return st


def test_the_pinned_minio_keeps_the_known_digest_path() -> None:
    # pyproject pins minio to the range whose private methods s3._Client relies on
    assert s3.KNOWN_DIGEST is True


@pytest.mark.parametrize("known", [True, False])
def test_put_with_a_known_digest_stores_the_bytes(
    store: S3Store, known: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3, "KNOWN_DIGEST", known)
    data = uuid.uuid4().bytes * 40000  # 640 kB
    key = f"k/{uuid.uuid4().hex}.dcm"
    store.put_bytes("digest", key, data, sha256=hashlib.sha256(data).hexdigest())
    assert store.get_bytes("digest", key) == data


@pytest.mark.parametrize("known", [True, False])
def test_a_spool_file_is_uploaded_with_its_recorded_digest_byte_for_byte(
    store: S3Store, known: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The relay's upload (``put_file(sha256=the ledger's digest)``): stored as on disk, also
    when the file changed since its digest was recorded (this server does not check the signed
    digest; MinIO and AWS refuse it, and the file is sent again hashed: the unit test below),
    and a file of more than one part (multipart, each part hashed by minio)."""
    monkeypatch.setattr(s3, "KNOWN_DIGEST", known)
    small = tmp_path / "small.dcm"
    small.write_bytes(uuid.uuid4().bytes * 40000)
    big = tmp_path / "big.dcm"
    big.write_bytes(uuid.uuid4().bytes * (s3._PART // 16 + 1000))  # noqa: SLF001 - one part more
    for path in (small, big):
        key = f"k/{uuid.uuid4().hex}.dcm"
        store.put_file("digest", key, path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        assert store.get_bytes("digest", key) == path.read_bytes()
    recorded = hashlib.sha256(small.read_bytes()).hexdigest()
    small.write_bytes(b"damaged since" + small.read_bytes()[13:])
    key = f"k/{uuid.uuid4().hex}.dcm"
    store.put_file("digest", key, small, sha256=recorded)
    assert store.get_bytes("digest", key) == small.read_bytes()


class _Refusing:
    """A stand-in for minio's client that refuses a body not matching its signed digest, as
    MinIO and AWS do (``XAmzContentSHA256Mismatch``), and records what it stored."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        self.refused = 0

    def _put_object(self, bucket: str, key: str, data: bytes, headers: dict) -> None:
        if hashlib.sha256(data).hexdigest() != headers[s3._KNOWN_SHA256]:  # noqa: SLF001
            self.refused += 1
            raise S3Error(None, "XAmzContentSHA256Mismatch", "mismatch", key, "r", "h")  # type: ignore[arg-type]
        self.stored[key] = data

    def put_object(self, bucket: str, key: str, stream: Any, length: int, **_kw: Any) -> None:
        self.stored[key] = stream.read(length)


def test_a_file_refused_for_its_digest_is_sent_again_as_it_is(tmp_path: Path) -> None:
    st = S3Store(S3Settings("127.0.0.1:9", "a", "b"))
    fake = _Refusing()
    st._client = fake  # type: ignore[assignment]  # noqa: SLF001 - the refusal is the point
    path = tmp_path / "x.dcm"
    path.write_bytes(b"original" * 1000)
    recorded = hashlib.sha256(path.read_bytes()).hexdigest()
    st.put_file("q", "k/ok.dcm", path, sha256=recorded)
    path.write_bytes(b"damaged!" * 1000)
    st.put_file("q", "k/damaged.dcm", path, sha256=recorded)
    assert fake.refused == 1
    assert fake.stored == {"k/ok.dcm": b"original" * 1000, "k/damaged.dcm": b"damaged!" * 1000}
