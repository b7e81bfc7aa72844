from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.pipeline import Pipeline


@pytest.fixture
def pipeline(
    tmp_path: Path, rabbitmq_url: str, namespace: str, s3_server, dcmtk
) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path, rabbitmq_url, namespace, s3_server)
    try:
        yield p
    finally:
        p.stop_all()
