from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.pipeline import Pipeline, running


@pytest.fixture
def pipeline(
    tmp_path: Path, rabbitmq_url: str, namespace: str, s3_server, dcmtk
) -> Iterator[Pipeline]:
    yield from running(tmp_path, rabbitmq_url, namespace, s3_server)
