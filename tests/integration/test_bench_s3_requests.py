"""The pipeline benchmark's S3 request count: read from weed's own counters, per instance."""

from __future__ import annotations

import io
import uuid

from helpers.services import S3Server

from bench.pipeline.bench_pipeline import S3Requests


def test_requests_per_instance_are_what_the_client_asked_by_bucket_type_and_status(
    s3_server: S3Server,
) -> None:
    client = s3_server.client()
    roles = {"quarantine": f"q-{uuid.uuid4().hex[:8]}", "staging": f"s-{uuid.uuid4().hex[:8]}"}
    for bucket in roles.values():
        client.make_bucket(bucket)
    counter = S3Requests(s3_server, roles)  # bucket creation is before the window
    q, s = roles["quarantine"], roles["staging"]
    for i in range(4):
        client.put_object(q, f"T/{i}.dcm", io.BytesIO(b"x" * 1000), 1000)
    for i in range(4):
        response = client.get_object(q, f"T/{i}.dcm")
        assert response.read() == b"x" * 1000
        response.close()
        response.release_conn()
    client.put_object(s, "T/0.dcm", io.BytesIO(b"y"), 1)
    try:
        client.stat_object(s, "T/missing.dcm")
    except Exception:  # noqa: BLE001 - the 404 is what is counted
        pass
    list(client.list_objects(s, prefix="T/"))

    counts = counter.per_instance(4)

    assert counts == {
        "quarantine PUT": 1.0,
        "quarantine GET": 1.0,
        "staging PUT": 0.25,
        "staging GET 404": 0.25,  # weed counts a HEAD as a GET
        "staging LIST": 0.25,
    }
