"""Two independent processes produce byte-identical output."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from conftest import KEY, planted_dataset, to_bytes

CHILD = """
import hashlib, sys
from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey
deid = Deidentifier(PseudonymKey.from_env(), DeidPolicy(trust_code="RTK"))
r = deid.process(open(sys.argv[1], "rb").read())
print(r.ok, r.patient_pseudonym, r.study_uid, r.sop_instance_uid,
      hashlib.sha256(r.data).hexdigest())
"""


def test_two_processes_byte_identical(tmp_path: Path) -> None:
    src = tmp_path / "in.dcm"
    src.write_bytes(to_bytes(planted_dataset()))
    root = Path(__file__).resolve().parents[3]
    env = dict(
        os.environ,
        SMARTBOX_PSEUDONYM_KEY=KEY.secret.decode(),
        SMARTBOX_PSEUDONYM_KEY_VERSION=KEY.version,
        PYTHONPATH=str(root),
        PYTHONHASHSEED="random",
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", CHILD, str(src)],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    assert outputs[0] == outputs[1]
    assert outputs[0].startswith("True ")
    from consumers.deid import Deidentifier, DeidPolicy

    here = Deidentifier(KEY, DeidPolicy(trust_code="RTK")).process(src.read_bytes())
    assert hashlib.sha256(here.data).hexdigest() in outputs[0]
