"""What every smartbox process does at start: settings, adapters, metrics, signals."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from . import __version__, metrics
from .bus import Bus
from .rabbit import RabbitBus
from .s3 import S3Store
from .settings import S3Settings, Settings
from .store import ObjectStore
from .topology import Topology

log = logging.getLogger(__name__)
#: where /metrics, /healthz and /readyz listen unless ``SMARTBOX_METRICS_HOST`` or
#: ``--metrics-host`` say otherwise: loopback, so that nothing is exposed by default
DEFAULT_METRICS_HOST = "127.0.0.1"


@dataclass
class Runtime:
    """The adapters a process works with, and its stop flag."""

    settings: Settings
    bus: Bus
    store: ObjectStore
    stop: threading.Event
    metrics_server: metrics.MetricsServer | None = None

    def national_store(self) -> ObjectStore:
        return s3_store(self.settings.national_s3)


def s3_store(settings: S3Settings) -> ObjectStore:
    return S3Store(settings)


def start(
    role: str,
    settings: Settings,
    *,
    metrics_host: str = DEFAULT_METRICS_HOST,
    metrics_port: int | None = None,
    install_signals: bool = True,
) -> Runtime:
    """Build the production adapters and serve /metrics (port None: no metrics server)."""
    metrics.BUILD.info({"version": __version__, "role": role})
    bus = RabbitBus(settings.amqp_url, Topology(settings.namespace), client=f"smartbox {role}")
    store = S3Store(settings.s3)
    stop = threading.Event()
    rt = Runtime(settings, bus, store, stop, None)
    if metrics_port is not None:
        serve_metrics(rt, metrics_port, metrics_host)
    if install_signals:
        install_stop_signals(stop)
    return rt


def serve_metrics(
    rt: Runtime,
    port: int,
    host: str = DEFAULT_METRICS_HOST,
) -> metrics.MetricsServer:
    """Serve /metrics, /healthz and /readyz (bus and object store checks) for ``rt``."""
    server = bind_metrics(rt, port, host).start()
    log.info("metrics on http://%s:%d/metrics", host, server.port)
    return server


def bind_metrics(
    rt: Runtime,
    port: int,
    host: str = DEFAULT_METRICS_HOST,
) -> metrics.MetricsServer:
    """The metrics server of ``rt``, its port bound but not yet serving (``start()`` it): a
    process binds before it opens anything else, so a port in use stops it cleanly."""
    server = metrics.MetricsServer(host, port)
    server.health.add_check("bus", rt.bus.ping)
    server.health.add_check("object_store", rt.store.ping)
    rt.metrics_server = server
    return server


def install_stop_signals(stop: threading.Event, on_stop: Callable[[], None] | None = None) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()
        if on_stop:
            on_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
