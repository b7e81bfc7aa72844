"""Every operator mistake of issue 10 ends in one clear line and exit 2, never a traceback.

Each case runs the installed ``smartbox`` command (``.venv/bin/smartbox``) as a real process
with a clean environment: only the ``SMARTBOX_*`` variables the case sets, a valid trust folder
and keys unless the case breaks them, and the real RabbitMQ where a case needs a broker.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.pipeline import KEY, SIGNING_SEED, free_port, verify_key_hex

SMARTBOX = str(Path(sys.executable).parent / "smartbox")


def write_trust(trusts: Path, code: str, port: int) -> None:
    trusts.mkdir(parents=True, exist_ok=True)
    (trusts / f"{code}.toml").write_text(
        f'code = "{code}"\nname = "Trust {code}"\nae_title = "SMARTBOX_{code}"\nport = {port}\n'
        f'allowed_callers = ["{code}_PACS"]\nbind_host = "127.0.0.1"\nworkers = 0\n'
    )


@pytest.fixture
def base(tmp_path: Path, rabbitmq_url: str) -> dict[str, str]:
    """A complete, valid configuration (each case breaks one thing)."""
    write_trust(tmp_path / "trusts", "RMX", free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTBOX_")}
    env.update(
        SMARTBOX_TRUSTS_DIR=str(tmp_path / "trusts"),
        SMARTBOX_SPOOL_DIR=str(tmp_path / "spool"),
        SMARTBOX_AMQP_URL=rabbitmq_url,
        SMARTBOX_NAMESPACE=f"t{uuid.uuid4().hex[:10]}",  # never declared: no queue exists
        SMARTBOX_S3_ENDPOINT="127.0.0.1:9",  # no S3 server is needed by any case
        SMARTBOX_PSEUDONYM_KEY=KEY,
        SMARTBOX_EXPORT_SIGNING_KEY=SIGNING_SEED,
        SMARTBOX_EXPORT_VERIFY_KEY=verify_key_hex(),
    )
    return env


def run(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SMARTBOX, *args], env=env, capture_output=True, text=True, timeout=120, cwd=cwd
    )


def one_line_error(out: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit 2, exactly one line on stderr naming what to fix, no traceback anywhere."""
    text = out.stdout + out.stderr
    assert "Traceback" not in text, text
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, text)
    assert len(lines) == 1, lines
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process (this test) already listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def test_a_valid_configuration_passes(base: dict[str, str]) -> None:
    out = run(base, "check-config")
    assert out.returncode == 0, out.stderr
    assert "RMX" in out.stdout and out.stderr == ""


def test_the_pseudonym_key_may_come_from_the_secrets_file(
    base: dict[str, str], tmp_path: Path
) -> None:
    secrets = tmp_path / "smartbox.env"
    secrets.write_text(f"SMARTBOX_PSEUDONYM_KEY={KEY}\n")
    env = {k: v for k, v in base.items() if k != "SMARTBOX_PSEUDONYM_KEY"}
    out = run({**env, "SMARTBOX_SECRETS_FILE": str(secrets)}, "check-config")
    assert out.returncode == 0, out.stderr


def test_the_shipped_examples_pass(base: dict[str, str], tmp_path: Path) -> None:
    """deploy/systemd/smartbox.env.example and trusts/ are what check-config accepts (the key
    files it names are the operator's to create: here, files of this test)."""
    root = Path(__file__).resolve().parents[2]
    (tmp_path / "pseudonym.key").write_text(KEY)
    (tmp_path / "signing.key").write_text(SIGNING_SEED)
    (tmp_path / "identity-index.key").write_text("index-" + KEY)
    env = {k: v for k, v in base.items() if not k.startswith("SMARTBOX_")}
    env.update(
        SMARTBOX_SECRETS_FILE=str(root / "deploy" / "systemd" / "smartbox.env.example"),
        SMARTBOX_TRUSTS_DIR=str(root / "trusts"),
        SMARTBOX_PSEUDONYM_KEY_FILE=str(tmp_path / "pseudonym.key"),
        SMARTBOX_EXPORT_SIGNING_KEY_FILE=str(tmp_path / "signing.key"),
        SMARTBOX_IDENTITY_INDEX_KEY_FILE=str(tmp_path / "identity-index.key"),
    )
    out = run(env, "check-config")
    assert out.returncode == 0, out.stderr
    assert "RGT" in out.stdout


CHECK_CONFIG = {
    "no trust files": ({}, "empty", ("no trust files", "SMARTBOX_TRUSTS_DIR")),
    "trusts folder missing": ({}, "missing", ("SMARTBOX_TRUSTS_DIR", "does not exist")),
    "bad cron": ({"SMARTBOX_EXPORT_SCHEDULE": "every night"}, "", ("SMARTBOX_EXPORT_SCHEDULE",)),
    "bad time zone": (
        {"SMARTBOX_EXPORT_TIMEZONE": "Europe/Lundon"},
        "",
        ("SMARTBOX_EXPORT_TIMEZONE",),
    ),
    "bad broker URL": ({"SMARTBOX_AMQP_URL": "http://rabbit:5672"}, "", ("SMARTBOX_AMQP_URL",)),
    "broker port": ({"SMARTBOX_AMQP_URL": "amqp://u:p@rabbit:56x2/"}, "", ("SMARTBOX_AMQP_URL",)),
    "cluster broker URL": (
        {"SMARTBOX_AMQP_URL": "amqp://u:p@rabbit1:5672/,amqp://u:p@rabbit2:56x2/"},
        "",
        ("SMARTBOX_AMQP_URL", "URL 2 of 2"),
    ),
    "S3 scheme": (
        {"SMARTBOX_S3_ENDPOINT": "http://minio:9000"},
        "",
        ("SMARTBOX_S3_ENDPOINT", "scheme"),
    ),
    "S3 port": ({"SMARTBOX_S3_ENDPOINT": "minio:nine"}, "", ("SMARTBOX_S3_ENDPOINT", "port")),
    "national S3": (
        {"SMARTBOX_NATIONAL_S3_ENDPOINT": "https://national.example"},
        "",
        ("SMARTBOX_NATIONAL_S3_ENDPOINT",),
    ),
    "metrics port": ({"SMARTBOX_METRICS_PORT": "91o1"}, "", ("SMARTBOX_METRICS_PORT",)),
    "no key": ({"SMARTBOX_PSEUDONYM_KEY": ""}, "", ("SMARTBOX_PSEUDONYM_KEY",)),
    "no signing key": ({"SMARTBOX_EXPORT_SIGNING_KEY": ""}, "", ("SMARTBOX_EXPORT_SIGNING_KEY",)),
}


@pytest.mark.parametrize("case", CHECK_CONFIG, ids=str)
def test_check_config_names_each_problem(base: dict[str, str], tmp_path: Path, case: str) -> None:
    change, trusts, names = CHECK_CONFIG[case]
    env = {**base, **change}
    if trusts:
        env["SMARTBOX_TRUSTS_DIR"] = str(tmp_path / trusts)
        if trusts == "empty":
            (tmp_path / trusts).mkdir()
    one_line_error(run(env, "check-config", cwd=tmp_path), *names)


def test_check_config_reports_every_problem_one_line_each(
    base: dict[str, str], tmp_path: Path
) -> None:
    write_trust(tmp_path / "trusts", "RMY", 0)
    (tmp_path / "trusts" / "RMZ.toml").write_text('code = "RMZ"\nport = "eleven"\n')
    env = {
        **base,
        "SMARTBOX_EXPORT_SCHEDULE": "61 * * * *",
        "SMARTBOX_EXPORT_TIMEZONE": "Mars/Olympus",
        "SMARTBOX_S3_ENDPOINT": "http://minio:9000",
        "SMARTBOX_PSEUDONYM_KEY": "",
    }
    out = run(env, "check-config")
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    expected = [
        "SMARTBOX_S3_ENDPOINT",
        "SMARTBOX_EXPORT_SCHEDULE",
        "SMARTBOX_EXPORT_TIMEZONE",
        "RMZ.toml",
        "SMARTBOX_PSEUDONYM_KEY",
    ]
    assert len(lines) == len(expected), lines
    for name in expected:
        assert sum(name in line for line in lines) == 1, (name, lines)


SAME_AS_THE_PROCESS = {
    "export window": (["export"], {"SMARTBOX_EXPORT_WINDOW_END": "6am"}),
    "signing key": (["export", "--now"], {"SMARTBOX_EXPORT_SIGNING_KEY": "00ff"}),
    "verify key": (["ingest"], {"SMARTBOX_EXPORT_VERIFY_KEY": ""}),
    "prefetch": (["anonymise"], {"SMARTBOX_PREFETCH": "0"}),
    "key too short": (["receive", "--trust", "RMX"], {"SMARTBOX_PSEUDONYM_KEY": "short"}),
}


@pytest.mark.parametrize("case", SAME_AS_THE_PROCESS, ids=str)
def test_check_config_says_what_the_process_would(base: dict[str, str], case: str) -> None:
    """One validation path: check-config --role R fails with the very line R fails with."""
    argv, change = SAME_AS_THE_PROCESS[case]
    env = {**base, **change}
    process = one_line_error(run(env, *argv))
    assert one_line_error(run(env, "check-config", "--role", argv[0])) == process


def test_a_bad_trust_file_stops_check_config_and_the_anonymiser_alike(
    base: dict[str, str],
) -> None:
    trusts = Path(base["SMARTBOX_TRUSTS_DIR"])
    (trusts / "RMQ.toml").write_text((trusts / "RMX.toml").read_text().replace("RMX", "RMQ"))
    (trusts / "RMQ.toml").write_text((trusts / "RMQ.toml").read_text() + "colour = 'blue'\n")
    line = one_line_error(run(base, "anonymise"), "RMQ.toml", "colour")
    assert one_line_error(run(base, "check-config")) == line


def test_dlq_list_before_any_queue_exists(base: dict[str, str]) -> None:
    line = one_line_error(run(base, "dlq", "list", "anonymiser"), "SMARTBOX_NAMESPACE")
    assert base["SMARTBOX_NAMESPACE"] in line


def test_dlq_list_with_a_mistyped_namespace(base: dict[str, str]) -> None:
    one_line_error(
        run({**base, "SMARTBOX_NAMESPACE": "smartbx"}, "dlq", "list", "exporter"),
        "smartbx",
        "SMARTBOX_NAMESPACE",
    )
    one_line_error(
        run({**base, "SMARTBOX_NAMESPACE": "smart box"}, "dlq", "list", "exporter"),
        "SMARTBOX_NAMESPACE",
    )


@pytest.mark.parametrize(
    "argv", [["dlq", "list", "anonymiser"], ["anonymise"], ["export", "--now"]], ids=" ".join
)
def test_a_malformed_broker_url(base: dict[str, str], argv: list[str]) -> None:
    for url in ("amqp://guest:guest@127.0.0.1:notaport/%2F", "rabbit:5672", "amqp://"):
        line = one_line_error(run({**base, "SMARTBOX_AMQP_URL": url}, *argv), "SMARTBOX_AMQP_URL")
        assert "guest:guest" not in line  # credentials never echoed


def test_a_receiver_port_already_in_use(base: dict[str, str], held_port: int) -> None:
    write_trust(Path(base["SMARTBOX_TRUSTS_DIR"]), "RMX", held_port)
    line = one_line_error(run(base, "receive", "--trust", "RMX"), str(held_port), "RMX.toml")
    assert "in use" in line


@pytest.mark.parametrize(
    "argv", [["anonymise"], ["ingest"], ["receive", "--trust", "RMX"]], ids=" ".join
)
def test_a_metrics_port_already_in_use(
    base: dict[str, str], held_port: int, argv: list[str]
) -> None:
    line = one_line_error(run(base, *argv, "--metrics-port", str(held_port)), str(held_port))
    assert "--metrics-port" in line and "in use" in line


@pytest.mark.parametrize("argv", [["export", "--now"], ["export"]], ids=" ".join)
@pytest.mark.parametrize(
    "change",
    [{"SMARTBOX_EXPORT_SCHEDULE": "0 25 * * *"}, {"SMARTBOX_EXPORT_TIMEZONE": "London"}],
    ids=lambda c: next(iter(c)),
)
def test_a_bad_cron_or_time_zone(
    base: dict[str, str], argv: list[str], change: dict[str, str]
) -> None:
    one_line_error(run({**base, **change}, *argv), next(iter(change)))


@pytest.mark.parametrize("argv", [["export", "--now"], ["held"], ["anonymise"]], ids=" ".join)
def test_an_s3_endpoint_with_a_scheme(base: dict[str, str], argv: list[str]) -> None:
    env = {**base, "SMARTBOX_S3_ENDPOINT": "https://minio.example:9000"}
    one_line_error(run(env, *argv), "SMARTBOX_S3_ENDPOINT", "SMARTBOX_S3_SECURE")


@pytest.mark.parametrize(
    "argv",
    [
        ["held"],
        ["status"],
        ["purge-quarantine"],
        ["reconcile", "--trust", "RMX"],
        ["report", "--trust", "RMX", "--from", "2026-01-01", "--to", "2026-02-01"],
    ],
    ids=lambda a: a[0],
)
def test_an_s3_server_that_is_down_is_one_line_naming_the_endpoint(
    base: dict[str, str], argv: list[str], tmp_path: Path
) -> None:
    """Not a mistake in the files but the same courtesy: exit 1 (unavailable, try again) and
    one line naming the endpoint and its setting, not urllib3's retries before it."""
    out = run(base, *argv, cwd=tmp_path)  # base: SMARTBOX_S3_ENDPOINT 127.0.0.1:9, nothing there
    text = out.stdout + out.stderr
    assert "Traceback" not in text and "Retrying" not in text, text
    assert out.returncode == 1, (out.returncode, text)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("smartbox: unavailable: "), lines[0]
    assert "S3 endpoint 127.0.0.1:9 (SMARTBOX_S3_ENDPOINT) unavailable" in lines[0], lines[0]


def test_a_bad_log_level(base: dict[str, str]) -> None:
    one_line_error(run(base, "--log-level", "LOUD", "check-config"), "--log-level", "LOUD")
    one_line_error(
        run({**base, "SMARTBOX_LOG_LEVEL": "chatty"}, "check-config"), "SMARTBOX_LOG_LEVEL"
    )


pytestmark = pytest.mark.integration
