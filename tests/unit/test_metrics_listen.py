"""Where /metrics, /healthz and /readyz listen: loopback unless SMARTBOX_METRICS_HOST or
--metrics-host say otherwise, for every process."""

from __future__ import annotations

import socket

import pytest

from smartbox import runtime
from smartbox.app.cli import build_parser
from smartbox.settings import Settings

PROCESSES = (["receive", "--trust", "RTK"], ["anonymise"], ["export"], ["ingest"], ["demo"])


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), 2).close()
    except OSError:
        return False
    return True


def served_on(host: str | None) -> tuple[bool, bool]:
    """Whether a process's metrics answer on 127.0.0.1 and on 127.0.0.2 (also this machine,
    but not the address a loopback-only server is bound to)."""
    extra = {} if host is None else {"metrics_host": host}
    rt = runtime.start(
        "test", Settings.from_env({}), metrics_port=0, install_signals=False, **extra
    )
    assert rt.metrics_server is not None
    try:
        port = rt.metrics_server.port
        return reachable("127.0.0.1", port), reachable("127.0.0.2", port)
    finally:
        rt.metrics_server.stop()


def test_by_default_metrics_listen_on_loopback_only() -> None:
    assert served_on(None) == (True, False)


def test_the_listen_address_is_honoured() -> None:
    assert served_on("0.0.0.0") == (True, True)  # noqa: S104 - the point of the test
    assert served_on("127.0.0.2") == (False, True)


@pytest.mark.parametrize("argv", PROCESSES, ids=lambda a: a[0])
def test_every_process_takes_the_address_from_env_or_flag(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SMARTBOX_METRICS_HOST", raising=False)
    assert build_parser().parse_args(argv).metrics_host == "127.0.0.1"
    monkeypatch.setenv("SMARTBOX_METRICS_HOST", "10.1.2.3")
    assert build_parser().parse_args(argv).metrics_host == "10.1.2.3"
    args = build_parser().parse_args([*argv, "--metrics-host", "0.0.0.0"])  # noqa: S104
    assert args.metrics_host == "0.0.0.0"  # noqa: S104


def test_a_client_that_went_away_is_one_debug_line_not_a_traceback(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """socketserver prints a traceback to stderr for any request error; a scraper closing its
    connection early (BrokenPipe under load) must not put one in the process's log."""
    import logging

    from smartbox.metrics import MetricsServer

    server = MetricsServer("127.0.0.1", 0).start()
    try:
        caplog.set_level(logging.DEBUG, logger="smartbox.metrics")
        for exc in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset")):
            try:
                raise exc
            except OSError:
                server._server.handle_error(None, ("127.0.0.1", 1))
        try:
            raise ValueError("unexpected")
        except ValueError:
            server._server.handle_error(None, ("127.0.0.1", 1))
    finally:
        server.stop()
    err = capfd.readouterr().err
    # what socketserver's default handle_error prints (another test's logging handler may
    # write its own complaints to this stderr: only socketserver's lines matter here)
    assert "Exception occurred during processing of request" not in err, err
    assert "-" * 40 not in err, err
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("metrics: client went away: BrokenPipeError") == 1
    assert "metrics: request failed: ValueError" in messages
