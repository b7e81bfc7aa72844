"""The anonymiser's upload with the payload digest it already has (``put_bytes(sha256=...)``)
against a real S3 server: stored byte for byte, and the public fallback (taken when minio's
private methods change) storing the same. (Whether the server refuses a body that does not
match the signed digest is the server's: MinIO and AWS do; SeaweedFS, measured here, does not.)"""

from __future__ import annotations

import hashlib
import uuid

import pytest

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

