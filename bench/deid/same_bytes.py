"""Do two checkouts de-identify alike? Every outcome of both, compared byte for byte.

    .venv/bin/python bench/deid/same_bytes.py BEFORE [AFTER] [--seeds 11,12] [--n 700]

For a change meant to be invisible in the output (a faster path, a cache), run before it is
trusted: ``git worktree add --detach /tmp/before HEAD~1`` then ``same_bytes.py /tmp/before``
(AFTER defaults to this checkout). The inputs are the fuzz corpora of ``tests/helpers/fuzz``
(one per seed, N cases each: mutated, truncated, deflated, odd character sets...) and
pydicom's bundled test files, then the first 300 inputs again (a cache must answer the same
the second time). Each tree runs in its own process, one ``Deidentifier`` per policy (four
policies, two key versions) over all inputs in order, so state carried from one instance to
the next shows. An outcome is the SHA-256 of the output, or the reason it was held back, or
the exception class. Prints the counts and the first differences (index, policy; never the
data); exit 0 if every outcome is the same, 1 if not, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: run in a fresh interpreter with the tree under test first on the path
RUN = """
import glob, hashlib, json, os, sys, warnings
from pathlib import Path
tree, harness, out, seeds, n = sys.argv[1:5] + [int(sys.argv[5])]
sys.path.insert(0, harness)  # the corpus: the same for both trees
sys.path.insert(0, tree)
warnings.simplefilter("ignore")  # pydicom warns about every mutated value
from helpers.fuzz import build_corpus
from consumers.deid import Deidentifier, DeidPolicy, PseudonymKey
from consumers.deid.config import DEFAULT_OPTIONS
import pydicom.data
inputs = []
for seed in seeds.split(","):
    inputs += [c.data for c in build_corpus(int(seed), n).cases]
base = os.path.join(os.path.dirname(pydicom.data.__file__), "test_files")
inputs += [Path(f).read_bytes() for f in sorted(glob.glob(base + "/**/*.dcm", recursive=True))]
inputs += inputs[:300]
policies = {
    "default": DeidPolicy(trust_code="RTK"),
    "full_dates_uids": DeidPolicy(
        trust_code="RTK",
        options=DEFAULT_OPTIONS | {"retain_longitudinal_full_dates", "retain_uids"},
    ),
    "no_options": DeidPolicy(trust_code="RTK", options=frozenset()),
    "allow_list_hold": DeidPolicy(trust_code="RTK", allow_list=True, unknown_names="hold"),
}
outcomes = {}
for name, policy in policies.items():
    for version in ("k1", "k2"):
        engine = Deidentifier(PseudonymKey(b"same-bytes-secret-0123456789", version), policy)
        got = []
        for data in inputs:
            try:
                r = engine.process(data)
            except Exception as exc:
                got.append("raised:" + type(exc).__name__)
                continue
            held = f"held:{r.reason}:{r.detail}"
            got.append(hashlib.sha256(r.data).hexdigest() if r.ok else held)
        outcomes[f"{name}/{version}"] = got
Path(out).write_text(json.dumps(outcomes))
"""


def outcomes(tree: Path, seeds: str, n: int, out: Path) -> dict[str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(tree), str(ROOT / "tests"), str(out), seeds, str(n)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONHASHSEED="0"),
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"same_bytes: {tree} failed: {tail[0]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("before", type=Path, help="a checkout (e.g. a git worktree of HEAD~1)")
    ap.add_argument("after", type=Path, nargs="?", default=ROOT, help="default: this checkout")
    ap.add_argument("--seeds", default="11,12", help="fuzz corpus seeds (default 11,12)")
    ap.add_argument("--n", type=int, default=700, help="cases per corpus (default 700)")
    args = ap.parse_args(argv)
    for tree in (args.before, args.after):
        if not (tree / "consumers" / "deid" / "deidentifier.py").is_file():
            print(f"same_bytes: {tree} is not a smartbox checkout", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="same-bytes-") as tmp:
        print(f"before: {args.before}", flush=True)
        a = outcomes(args.before.resolve(), args.seeds, args.n, Path(tmp) / "a.json")
        print(f"after:  {args.after}", flush=True)
        b = outcomes(args.after.resolve(), args.seeds, args.n, Path(tmp) / "b.json")
    total = sum(len(v) for v in a.values())
    differ = [
        (i, key) for key in a for i, (x, y) in enumerate(zip(a[key], b[key], strict=True)) if x != y
    ]
    released = sum(not o.startswith(("held:", "raised:")) for v in a.values() for o in v)
    print(f"{total} outcomes ({len(a)} policies x {total // len(a)} inputs), {released} outputs")
    if differ:
        print(f"{len(differ)} differ; the first: " + ", ".join(f"#{i} {k}" for i, k in differ[:10]))
        return 1
    print("every outcome the same, every output byte-identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
