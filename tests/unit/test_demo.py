"""The demo runs the repository's trusts, leaves no identifiable synthetic original behind unless
asked to keep its folder, and can keep serving so the metrics URL it prints answers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARGS = ("demo", "--studies", "1", "--series", "1", "--instances", "2")


def demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "SMARTBOX_TRUSTS_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "smartbox", *ARGS, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**environ, **(env or {})},
    )


def folder(stdout: str) -> Path:
    m = re.search(r"^smartbox demo in (\S+) ", stdout, re.M)
    assert m, stdout
    return Path(m[1])


def test_the_temporary_folder_of_identifiable_originals_is_removed() -> None:
    out = demo()
    assert out.returncode == 0, out.stdout + out.stderr
    root = folder(out.stdout)
    assert not root.exists()
    assert f"removed {root}" in out.stdout
    assert "trusts: RGT, RTH from the trust files in" in out.stdout  # the repository's


def test_a_workdir_is_kept_and_the_demo_says_so(tmp_path: Path) -> None:
    out = demo("--workdir", str(tmp_path / "work"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert folder(out.stdout) == tmp_path / "work"
    assert f"kept in {tmp_path / 'work'}" in out.stdout
    staged = [p for p in (tmp_path / "work" / "objects" / "staging").rglob("*.dcm")]
    assert len(staged) == 4


def test_the_trusts_come_from_the_trust_files(tmp_path: Path) -> None:
    (tmp_path / "trusts").mkdir()
    (tmp_path / "trusts" / "RZZ.toml").write_text(
        'code = "RZZ"\nname = "Only trust"\nae_title = "SB_RZZ"\nport = 104\n'
        'allowed_callers = ["RZZ_PACS"]\nallowed_networks = ["10.9.0.0/16"]\n'
    )
    out = demo(env={"SMARTBOX_TRUSTS_DIR": str(tmp_path / "trusts")})
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith("R")]
    assert [r[0] for r in rows if len(r) == 7] == ["RZZ"]
    bad = demo("--trusts", str(tmp_path / "none"))
    assert bad.returncode == 2 and "--trusts" in bad.stderr and "Traceback" not in bad.stderr


def test_keep_running_serves_the_metrics_url_it_printed() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "SMARTBOX_TRUSTS_DIR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "smartbox", *ARGS, "--keep-running"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving http://"):
                break
        url = lines[-1].split()[1]
        assert "demo OK" in "".join(lines), "".join(lines)
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        assert 'smartbox_instances_received_total{trust="RGT"} 2.0' in text
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert not folder("".join(lines)).exists() and "removed" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
