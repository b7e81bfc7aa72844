"""Log hygiene is one set-up every process shares: no element value reaches a log line, not
even from pydicom's warnings about malformed input (each case runs in its own process: the
set-up is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers.malformed import malformed_study

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = {"SMARTBOX_PSEUDONYM_KEY": "unit-test-" + "k" * 32}


def run(
    code: str, *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **KEY_ENV, **(extra_env or {}))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_the_deidentifier_logs_no_value_of_malformed_input(tmp_path: Path) -> None:
    study = malformed_study(11)
    files = study.write(tmp_path / "in")
    proc = run(
        """
        import logging, sys
        from pathlib import Path
        from smartbox import logs
        from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey
        logs.setup("anonymiser", "DEBUG")
        deid = Deidentifier(PseudonymKey.from_env(), DeidPolicy(trust_code="RTK"))
        for name in sys.argv[1:]:
            result = deid.process(Path(name).read_bytes())
            logging.getLogger("consumers.anonymiser").info("processed: %s", result.reason)
        """,
        *map(str, files),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("processed:") == len(files)
    for value in study.identifiers:
        assert value not in proc.stderr + proc.stdout, "a planted identifier reached the log"


def test_third_party_text_and_exception_messages_are_withheld() -> None:
    proc = run(
        """
        import logging, warnings
        from smartbox import logs
        from smartbox.errors import PermanentError
        logs.setup("ingest")
        warnings.warn("Invalid value for VR DA: 'Featherstonehaugh'")
        logging.getLogger("pydicom").warning("Invalid value for VR UI: %r", "Araminta")
        logging.getLogger("pynetdicom.assoc").error("dataset: Quennell")
        try:
            try:
                raise ValueError("Invalid value for VR IS: 'RTK00123456'")
            except ValueError as exc:
                raise PermanentError("batch manifest has malformed instance entries") from exc
        except PermanentError:
            logging.getLogger("smartbox.bus").exception("unexpected error handling m1")
        try:
            open("/nonexistent/Wrigglesworth.dcm")
        except OSError:
            logging.getLogger("smartbox.spool").exception("spool")
        """
    )
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr
    for value in ("Featherstonehaugh", "Araminta", "Quennell", "RTK00123456", "Wrigglesworth"):
        assert value not in log
    assert log.count("text withheld") >= 4  # the lines are there, and say why they are short
    assert "UserWarning at <string>" in log
    # our own messages and the exception classes survive, so the log is still useful
    assert "PermanentError: batch manifest has malformed instance entries" in log
    assert "ValueError (text withheld" in log
    assert "FileNotFoundError: [Errno 2] No such file or directory" in log


def test_smartbox_deidentify_logs_no_value_of_malformed_input(tmp_path: Path) -> None:
    study = malformed_study(12)
    study.write(tmp_path / "in")
    proc = run(
        "from smartbox.app.cli import main; import sys; sys.exit(main(sys.argv[1:]))",
        "deidentify",
        str(tmp_path / "in"),
        "--out",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "of 5 file(s) de-identified" in proc.stdout
    for value in study.identifiers:
        assert value not in proc.stderr + proc.stdout


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line of a log, parsed: a line that is not a JSON object fails the test."""
    out = []
    for line in text.splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        out.append(record)
    return out


FIELDS = {"timestamp", "level", "process", "trust", "correlation_id", "message_id", "logger"}


def test_json_lines_carry_process_trust_and_the_message_context() -> None:
    proc = run(
        """
        import logging
        from smartbox import logs
        from smartbox.errors import PermanentError
        logs.setup("anonymiser", trust="RTK")
        log = logging.getLogger("consumers.anonymiser")
        log.info("before any message")
        with logs.context(trust="RGT", correlation_id="c" * 8, message_id="m" * 8):
            log.info("study %s staged", "s1")
            logging.getLogger("pydicom").warning("Invalid value: %r", "Araminta")
            try:
                raise PermanentError("bad \\"quoted\\" manifest")
            except PermanentError:
                log.exception("failed")
        log.info("after")
        """,
        extra_env={"SMARTBOX_LOG_FORMAT": "json"},
    )
    assert proc.returncode == 0, proc.stderr
    records = json_lines(proc.stderr)
    assert [r["message"].split(" ")[0].split(":")[0] for r in records] == [
        "before",
        "study",
        "<string>",
        "failed",
        "after",
    ]
    for r in records:
        assert FIELDS <= set(r), r
        assert r["process"] == "anonymiser"
        assert str(r["timestamp"]).endswith("Z")
    before, staged, third, failed, after = records
    assert (before["trust"], before["correlation_id"], before["message_id"]) == ("RTK", None, None)
    assert (staged["trust"], staged["correlation_id"], staged["message_id"]) == (
        "RGT",
        "c" * 8,
        "m" * 8,
    )
    assert staged["message"] == "study s1 staged" and staged["level"] == "INFO"
    assert "Araminta" not in proc.stderr and "text withheld" in third["message"]
    assert failed["level"] == "ERROR" and failed["correlation_id"] == "c" * 8
    assert 'PermanentError: bad "quoted" manifest' in failed["exception"]
    assert after["correlation_id"] is None and after["trust"] == "RTK"


def test_text_format_on_request_and_a_bad_format_is_one_line() -> None:
    code = """
        import logging
        from smartbox import logs
        logs.setup("ingest")
        with logs.context(correlation_id="c" * 8):
            logging.getLogger("consumers.ingest").warning("hello")
        """
    text = run(code, extra_env={"SMARTBOX_LOG_FORMAT": "text"})
    assert text.returncode == 0, text.stderr
    assert " WARNING ingest consumers.ingest: hello [correlation cccccccc]" in text.stderr
    bad = run(
        "from smartbox.app.cli import main; import sys; sys.exit(main(sys.argv[1:]))",
        "held",
        extra_env={"SMARTBOX_LOG_FORMAT": "yaml"},
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "SMARTBOX_LOG_FORMAT" in lines[0] and "json" in lines[0]


def test_the_consumer_loop_sets_the_message_context(tmp_path: Path) -> None:
    """Both buses handle deliveries through one function: it binds the envelope's ids."""
    proc = run(
        """
        import logging, threading
        import schemas
        from smartbox import logs
        from smartbox.bus import MemoryBus
        logs.setup("exporter")
        bus = MemoryBus()
        stop = threading.Event()
        first = schemas.make_message("study.arrived", trust="RTK", producer="receiver/RTK@h",
            body={"study_key": "a" * 32, "bucket": "quarantine", "batch_key": "k",
                  "batch_id": "b" * 32, "instance_count": 1, "bytes": 1, "modalities": ["CT"],
                  "amendment": False, "first_received_at": "2025-01-01T00:00:00Z",
                  "last_received_at": "2025-01-01T00:00:00Z"})
        bus.publish(first)
        def handler(message):
            logging.getLogger("consumers.anonymiser").info("handled")
            stop.set()
        bus.consume("anonymiser", handler, stop=stop)
        logging.getLogger("consumers.anonymiser").info("ids %s %s",
            first["correlation_id"], first["message_id"])
        """,
        extra_env={"SMARTBOX_LOG_FORMAT": "json"},
    )
    assert proc.returncode == 0, proc.stderr
    handled, ids = json_lines(proc.stderr)
    _, correlation, message = str(ids["message"]).split()
    assert handled["message"] == "handled"
    assert (handled["trust"], handled["correlation_id"], handled["message_id"]) == (
        "RTK",
        correlation,
        message,
    )
    assert ids["correlation_id"] is None  # the context ends with the delivery
