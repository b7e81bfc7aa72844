"""The command line: help lists every process, errors are one line with the right exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def smartbox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smartbox", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_every_process() -> None:
    out = smartbox("--help")
    assert out.returncode == 0
    for command in ("receive", "anonymise", "export", "ingest", "demo", "deidentify", "dlq"):
        assert command in out.stdout
    for command in ("receive", "anonymise", "export", "ingest", "demo", "dlq", "held"):
        sub = smartbox(command, "--help")
        assert sub.returncode == 0 and "usage: smartbox" in sub.stdout, command


def test_unknown_trust_is_a_one_line_error() -> None:
    # with the key set: a process reports every problem it finds at start, one line each
    out = smartbox("receive", "--trust", "NOPE", env={"SMARTBOX_PSEUDONYM_KEY": "k" * 32})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("smartbox: error: unknown trust NOPE")


def test_missing_key_stops_de_identifying_commands(tmp_path: Path) -> None:
    env = {"SMARTBOX_PSEUDONYM_KEY": "", "SMARTBOX_TRUSTS_DIR": str(ROOT / "trusts")}
    out = smartbox("check-config", env=env)
    assert out.returncode == 2
    assert "no pseudonymisation key" in out.stderr


def test_demo_twice_in_a_row(tmp_path: Path) -> None:
    for run in range(2):
        out = smartbox("demo", "--studies", "1", "--series", "2", "--instances", "2")
        assert out.returncode == 0, out.stdout + out.stderr
        table = out.stdout[out.stdout.index("trust  ") :].splitlines()
        codes = sorted(p.stem for p in (ROOT / "trusts").glob("*.toml"))  # the repo's trusts
        rows = [line.split() for line in table[2 : 2 + len(codes)]]
        assert [r[0] for r in rows] == codes, run
        for r in rows:
            sent, received, staged, held, exported, ingested = map(int, r[1:7])
            assert sent == received == staged == exported == ingested == 4
            assert held == 0
        assert "demo OK" in out.stdout
