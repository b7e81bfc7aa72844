"""``smartbox deidentify INPUT... --out DIR [--trust CODE] [--strict]``

Runs exactly the pipeline's de-identification (table, pixel gate, verification gate) on files
or folders, so a trust's governance lead can try the profile on sample data. Writes the
de-identified instances to DIR as ``<SOPInstanceUID>.dcm`` and ``DIR/summary.json``.

Exit status: 0 done; 1 nothing could be read; 2 configuration error (no key, bad trust
file); 3 something was held back and ``--strict`` was given.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from smartbox import logs
from smartbox.config import environment, load_trust
from smartbox.errors import ConfigError

from .config import DeidPolicy, PseudonymKey
from .deidentifier import Deidentifier
from .policy import PolicyBuilder
from .reasons import Reason
from .table import CODE_VERSION, TABLE_EDITION


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smartbox deidentify",
        description="De-identify DICOM files exactly as the pipeline would (PS3.15 Annex E).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM files or folders")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--trust", metavar="CODE", help="apply this trust's settings")
    p.add_argument(
        "--trusts-dir",
        type=Path,
        metavar="DIR",
        default=None,
        help="folder of trust files (default: $SMARTBOX_TRUSTS_DIR, else ./trusts)",
    )
    p.add_argument("--strict", action="store_true", help="exit 3 if anything is held back")
    return p


def policy_for(
    trust: str | None, trusts_dir: Path, environ: dict[str, str] | None = None
) -> DeidPolicy:
    """The policy the pipeline applies to ``trust`` (its trust file, validated as every process
    validates it, and the deployment's defaults): the one builder, ``policy.PolicyBuilder``."""
    builder = PolicyBuilder.from_env(environ)
    if not trust:
        return builder.local()
    return builder.for_trust(load_trust(trusts_dir, trust))


def _files(inputs: list[str]) -> Iterator[Path]:
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup("deidentify")  # the same log hygiene as the pipeline: no element values
    try:  # the key, the trust file and the defaults exactly as the anonymiser reads them
        env = environment()
        trusts_dir = args.trusts_dir or Path(env.get("SMARTBOX_TRUSTS_DIR", "trusts"))
        key = PseudonymKey.from_env(env)
        policy = policy_for(args.trust, trusts_dir, env)
        deid = Deidentifier(key, policy)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"smartbox deidentify: {line}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    held: Counter[Reason] = Counter()
    written, read_ok, total = 0, 0, 0
    held_files: list[dict[str, str]] = []
    nhs_fallbacks = masked = 0
    for path in _files(args.inputs):
        if path.resolve().parent == args.out.resolve():
            continue  # never re-read our own output
        total += 1
        try:
            raw = path.read_bytes()
        except OSError as exc:
            held[Reason.UNREADABLE] += 1
            code = errno.errorcode.get(exc.errno or 0, "EIO")
            held_files.append(
                {"input": str(path), "reason": Reason.UNREADABLE.value, "detail": code}
            )
            continue
        result = deid.process(raw)
        if result.reason != Reason.UNPARSEABLE:
            read_ok += 1
        if result.ok and result.data is not None:
            (args.out / f"{result.sop_instance_uid}.dcm").write_bytes(result.data)
            written += 1
            nhs_fallbacks += not result.nhs_number_valid
            masked += result.mask_rule is not None
        else:
            reason = result.reason or Reason.DEID_ERROR
            held[reason] += 1
            item = {"input": str(path), "reason": reason.value}
            if result.detail:
                item["detail"] = result.detail
            held_files.append(item)

    summary = {
        "code_version": CODE_VERSION,
        "table_edition": TABLE_EDITION,
        "key_version": key.version,
        "trust": policy.trust_code,
        "options": sorted(policy.options),
        "files": total,
        "written": written,
        "held_back": sum(held.values()),
        "held_back_by_reason": {r.value: n for r, n in sorted(held.items())},
        "nhs_number_fallbacks": nhs_fallbacks,
        "pixels_masked": masked,
        "mask_rules": len(policy.mask_rules),
        "ocr": policy.ocr,
        "held_back_files": held_files,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    print(f"{written} of {total} file(s) de-identified into {args.out}")
    if held:
        width = max(len(r) for r in held)
        print(f"{'held back: reason'.ljust(width)}  count")
        for reason, count in sorted(held.items()):
            print(f"{reason.ljust(width)}  {count:5d}")
    if read_ok == 0:
        print("smartbox deidentify: nothing could be read", file=sys.stderr)
        return 1
    if held and args.strict:
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
