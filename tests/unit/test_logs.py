"""Log hygiene is one set-up every process shares: no element value reaches a log line, not
even from pydicom's warnings about malformed input (each case runs in its own process: the
set-up is process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers.malformed import malformed_study

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = {"SMARTBOX_PSEUDONYM_KEY": "unit-test-" + "k" * 32}


def run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **KEY_ENV)
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
        "from smartbox.cli import main; import sys; sys.exit(main(sys.argv[1:]))",
        "deidentify",
        str(tmp_path / "in"),
        "--out",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "of 5 file(s) de-identified" in proc.stdout
    for value in study.identifiers:
        assert value not in proc.stderr + proc.stdout
