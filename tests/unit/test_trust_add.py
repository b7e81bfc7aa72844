"""``smartbox trust add``: a new trust file the receiver's loader accepts, the details to give
the trust, and one-line refusals (exit 2, nothing written) for every operator mistake."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from consumers.deid.policy import PolicyBuilder
from smartbox.trusts import TrustRegistry, load_all_trusts, load_trust

ROOT = Path(__file__).resolve().parents[2]


def trust_add(trusts: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smartbox", "trust", "add", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "SMARTBOX_TRUSTS_DIR": str(trusts)},
    )


@pytest.fixture
def trusts(tmp_path: Path) -> Path:
    """A copy of the repository's trusts/ (RGT on 11112, RTH on 11113)."""
    directory = tmp_path / "trusts"
    shutil.copytree(ROOT / "trusts", directory)
    return directory


def test_add_writes_a_file_the_receiver_loads(trusts: Path) -> None:
    out = trust_add(
        trusts, "RXQ", "--name", "Example Hospitals NHS Trust", "--caller", "RXQ_PACS",
        "--caller", "RXQ_ARCH", "--network", "10.20.0.0/16", "--host", "smartbox.example.nhs.uk",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    trust = load_trust(trusts, "RXQ")  # what `smartbox receive --trust RXQ` runs
    assert (trust.name, trust.ae_title, trust.port) == (
        "Example Hospitals NHS Trust",
        "SMARTBOX_RXQ",
        11114,  # the first port from 11112 that no other trust file uses
    )
    assert trust.allowed_callers == ("RXQ_PACS", "RXQ_ARCH")
    assert trust.allowed_networks == ("10.20.0.0/16",)
    assert trust.caller_allowed("RXQ_PACS", "10.20.3.4") == (True, "ok")
    assert trust.caller_allowed("RXQ_PACS", "192.0.2.1")[0] is False
    assert set(load_all_trusts(trusts)) == {"RGT", "RTH", "RXQ"}
    # the consumers' loader too, and the anonymiser's policy of it
    assert PolicyBuilder().for_trust(TrustRegistry(trusts).get("RXQ")).options
    lines = out.stdout.splitlines()
    assert "  AE title: SMARTBOX_RXQ" in lines
    assert "  host:     smartbox.example.nhs.uk" in lines
    assert "  port:     11114" in lines
    assert out.stderr == ""


def test_explicit_port_and_ae_title_and_a_fresh_directory(tmp_path: Path) -> None:
    trusts = tmp_path / "new" / "trusts"
    out = trust_add(trusts, "RZZ", "--name", 'Quote "and" back\\slash', "--caller", "*",
                    "--ae-title", "HUB_RZZ", "--port", "4242")  # fmt: skip
    assert out.returncode == 0, out.stderr
    trust = load_trust(trusts, "RZZ")
    assert (trust.name, trust.ae_title, trust.port) == ('Quote "and" back\\slash', "HUB_RZZ", 4242)
    again = trust_add(trusts, "RZY", "--name", "Next", "--caller", "P")
    assert again.returncode == 0 and load_trust(trusts, "RZY").port == 11112


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["RGT", "--name", "Again", "--caller", "P"], "already configured"),
        (["RXQ", "--name", "X", "--caller", "P", "--port", "11113"], "port 11113 is already used"),
        (["RXQ", "--name", "X", "--caller", "P", "--ae-title", "SMARTBOX_RGT"],
         "AE title SMARTBOX_RGT is already used"),
        (["rxq", "--name", "X", "--caller", "P"], "2-8 upper-case"),
        (["RXQ", "--name", "X", "--caller", "BAD\\AE"], "allowed_callers"),
        (["RXQ", "--name", "X", "--caller", "P", "--network", "10.0.0.300/8"], "allowed_networks"),
        (["RXQ", "--name", "X", "--caller", "P", "--ae-title", "A" * 17], "ae_title"),
        (["RXQ", "--name", "X", "--caller", "P", "--port", "0"], "a fixed port"),
        (["RXQ", "--name", "X", "--caller", "P", "--port", "70000"], "a fixed port"),
        (["RXQ", "--name", "X", "--caller", "P", "--port", "x"], "invalid int value"),
        (["RXQ", "--name", "X", "--caller", "P", "--nhs-number-attribute", "Nope"],
         "nhs_number_attribute"),
        (["RXQ", "--caller", "P"], "required: --name"),
        (["RXQ", "--name", " ", "--caller", "P"], "'name'"),
    ],
)  # fmt: skip
def test_mistakes_are_one_line_and_write_nothing(
    trusts: Path, args: list[str], needle: str
) -> None:
    before = {p.name: p.read_bytes() for p in trusts.iterdir()}
    out = trust_add(trusts, *args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out
    assert len(lines) == 1 and lines[0].startswith("smartbox: error:"), out.stderr
    assert needle in lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert {p.name: p.read_bytes() for p in trusts.iterdir()} == before


def test_an_invalid_existing_trust_file_is_named(trusts: Path) -> None:
    (trusts / "RBAD.toml").write_text('code = "RBAD"\nport = "x"\n')
    out = trust_add(trusts, "RXQ", "--name", "X", "--caller", "P")
    assert out.returncode == 2 and "RBAD.toml" in out.stderr
    assert not (trusts / "RXQ.toml").exists()


def test_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "smartbox", "trust", "add", "--help"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0
    for flag in ("--name", "--caller", "--network", "--port", "--ae-title", "--host"):
        assert flag in out.stdout
