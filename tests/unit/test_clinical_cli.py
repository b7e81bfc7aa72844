"""``smartbox clinical submit`` as an operator meets it: exit codes, one-line mistakes, and a
seeded mutation run of the file reader (whatever a hospital extract holds, a row is checked or
the file refused with one line: nothing raises, nothing is echoed)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from helpers.clinical import NHS_A, NHS_BAD, identified, planted, write_csv

from consumers.clinical.rows import read_rows
from consumers.clinical.validate import ValidRow, check_row
from smartbox.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def smartbox(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp / "trusts").mkdir(exist_ok=True)
    (tmp / "trusts" / "RCL.toml").write_text(
        'code = "RCL"\nname = "Clinical test"\nae_title = "SB_RCL"\nport = 11999\n'
        'allowed_callers = ["RCL_PACS"]\n'
    )
    base = {
        "SMARTBOX_PSEUDONYM_KEY": "c" * 32,
        "SMARTBOX_TRUSTS_DIR": str(tmp / "trusts"),
        # nothing listens here: a submit that tried to publish would fail with exit 1
        "SMARTBOX_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F?connection_attempts=1",
    }
    return subprocess.run(
        [sys.executable, "-m", "smartbox", "clinical", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **base, **env},
    )


def test_help_and_dry_run_exit_codes(tmp_path: Path) -> None:
    assert smartbox(tmp_path, "--help").returncode == 0
    assert smartbox(tmp_path, "submit", "--help").returncode == 0
    good = write_csv(tmp_path / "good.csv", [identified(NHS_A)])
    out = smartbox(tmp_path, "submit", "--trust", "RCL", "--dry-run", str(good))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("1 rows: 1 accepted, 0 held back")
    rows = [identified(NHS_A), identified(NHS_BAD)]
    mixed = write_csv(tmp_path / "mixed.csv", rows)
    out = smartbox(tmp_path, "submit", "--trust", "RCL", "--dry-run", str(mixed))
    assert out.returncode == 3
    assert f"{mixed}: row 3: field nhs_number: nhs_number_checksum" in out.stdout
    for value in planted(rows[1]):
        assert value not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("args", "env", "expect"),
    [
        (("--trust", "NOPE"), {}, "unknown trust NOPE"),
        (("--trust", "RCL"), {"SMARTBOX_PSEUDONYM_KEY": ""}, "no pseudonymisation key"),
        (("--trust", "RCL", "--file-missing"), {}, "cannot be read"),
        (("--trust", "RCL", "--bad-column"), {}, "is not a clinical field"),
    ],
)
def test_operator_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], expect: str
) -> None:
    good = write_csv(tmp_path / "good.csv", [identified(NHS_A)])
    path = str(good)
    if "--file-missing" in args:
        path = str(tmp_path / "nowhere.csv")
    if "--bad-column" in args:
        (tmp_path / "bad.csv").write_text("nhs_number,surname\n" + NHS_A + ",Smith\n")
        path = str(tmp_path / "bad.csv")
    args = tuple(a for a in args if not a.startswith("--file") and a != "--bad-column")
    out = smartbox(tmp_path, "submit", *args, str(path), **env)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], out.stderr
    assert "Traceback" not in out.stderr and "Smith" not in out.stderr


def test_broker_unavailable_is_exit_1_without_a_traceback(tmp_path: Path) -> None:
    good = write_csv(tmp_path / "good.csv", [identified(NHS_A)])
    out = smartbox(tmp_path, "submit", "--trust", "RCL", str(good))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "unavailable" in out.stderr and "Traceback" not in out.stderr


def test_mutated_files_are_checked_or_refused_never_crash(tmp_path: Path) -> None:
    seed = int(os.environ.get("SMARTBOX_FUZZ_SEED", "12"))
    rng = random.Random(seed)
    rows = [identified(NHS_A), identified(NHS_BAD, swab_2_date="2020-05-01")]
    base = write_csv(tmp_path / "base.csv", rows).read_bytes()
    alphabet = b',;"\n\r\t0123456789-/ abcxyzPOSITIVE\xff\xc3\xa9\x00'
    outcomes = {"refused": 0, "rows": 0}
    for n in range(400):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 12)):
            op = rng.randrange(4)
            i = rng.randrange(len(data) + 1)
            if op == 0 and data:
                del data[i % len(data)]
            elif op == 1:
                data.insert(i, rng.choice(alphabet))
            elif op == 2 and data:
                data[i % len(data)] = rng.choice(alphabet)
            else:
                j = rng.randrange(len(data) + 1)
                data[i:i] = data[min(i, j) : max(i, j)][:200]
        path = tmp_path / f"m{n}.{'json' if n % 10 == 0 else 'csv'}"
        path.write_bytes(bytes(data))
        try:
            parsed = read_rows(path)
        except ConfigError as exc:
            outcomes["refused"] += 1
            for value in planted(rows[0]):
                assert value not in str(exc)
            continue
        for row in parsed:
            result = check_row(row, date(2026, 12, 1))
            assert isinstance(result, ValidRow | list)
            if isinstance(result, list):
                assert result, "a held-back row has at least one problem"
        outcomes["rows"] += 1
    assert outcomes["refused"] and outcomes["rows"]
