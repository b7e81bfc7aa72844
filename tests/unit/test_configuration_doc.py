"""``docs/configuration.md`` lists every environment variable: each ``SMARTBOX_*`` name the code
or ``deploy/`` uses is a row, and each row is a name the code reads (no stale rows)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
NAME = re.compile(r"\bSMARTBOX_[A-Z0-9_]*[A-Z0-9]\b")
#: names of that shape that are not environment variables, with the reason
NOT_VARIABLES = {
    "SMARTBOX_1": "the receiver's DICOM implementation version name",
    "SMARTBOX_QR": "the cohort process's default AE title towards a trust's archive",
}


def documented() -> list[str]:
    rows = [line for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    names = []
    for row in rows[2:]:  # header and separator
        first = row.split("|")[1]
        found = NAME.findall(first)
        assert len(found) == 1, f"one variable per row, spelt in full: {row}"
        names.append(found[0])
    return names


def in_code() -> set[str]:
    """Every ``SMARTBOX_*`` name in a string literal of the code (f-string parts included:
    a name built from pieces would not be found, so the code spells every name whole)."""
    names: set[str] = set()
    for top in ("smartbox", "producers", "consumers"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names.update(NAME.findall(node.value))
    return names - set(NOT_VARIABLES) - trust_ae_titles()  # AE titles in examples


def trust_ae_titles() -> set[str]:
    return {f"SMARTBOX_{p.stem}" for p in (ROOT / "trusts").glob("*.toml")}


def in_deploy() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "deploy").rglob("*"):
        if path.is_file():
            names.update(NAME.findall(path.read_text(encoding="utf-8", errors="replace")))
    return names - trust_ae_titles()  # the example trusts' AE titles, SMARTBOX_<CODE>


def test_every_row_is_one_variable_listed_once() -> None:
    names = documented()
    assert len(names) > 30
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]


def test_every_variable_the_code_reads_is_documented() -> None:
    assert sorted(in_code() - set(documented())) == []


def test_every_documented_variable_is_read_by_the_code() -> None:
    assert sorted(set(documented()) - in_code()) == []


def test_deploy_files_use_only_documented_variables() -> None:
    assert sorted(in_deploy() - set(documented())) == []
