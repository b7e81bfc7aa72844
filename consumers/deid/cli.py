"""``smartbox deidentify INPUT... --out DIR [--trust CODE] [--strict]``

Runs exactly the pipeline's de-identification (table, pixel gate, verification gate) on files
or folders, so a trust's governance lead can try the profile on sample data. Writes the
de-identified instances to DIR as ``<SOPInstanceUID>.dcm`` and ``DIR/summary.json``.

Exit status: 0 done; 1 nothing could be read; 2 configuration error (no key, bad trust
file); 3 something was held back and ``--strict`` was given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_OPTIONS,
    DeidConfigError,
    DeidPolicy,
    PseudonymKey,
    mask_rules_from_toml,
)
from .deidentifier import Deidentifier
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
        default=Path(os.environ.get("SMARTBOX_TRUSTS_DIR", "trusts")),
    )
    p.add_argument("--strict", action="store_true", help="exit 3 if anything is held back")
    return p


def policy_for(trust: str | None, trusts_dir: Path) -> DeidPolicy:
    """The trust's policy from ``<trusts_dir>/<CODE>.toml`` (tolerant: missing keys default)."""
    if not trust:
        return DeidPolicy(trust_code="LOCAL")
    path = trusts_dir / f"{trust}.toml"
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise DeidConfigError(f"{path}: no such trust file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeidConfigError(f"{path}: {exc}") from exc
    trust_doc = doc.get("trust", doc) if isinstance(doc.get("trust"), dict) else doc
    deid_doc = doc.get("deidentification", {})
    options = deid_doc.get("options")
    rules = mask_rules_from_toml(
        deid_doc.get("mask_rules", []), where=f"{path}: deidentification.mask_rules"
    )
    return DeidPolicy(
        trust_code=str(trust_doc.get("code", trust)),
        nhs_number_attribute=str(trust_doc.get("nhs_number_attribute", "PatientID")),
        options=frozenset(options) if options is not None else DEFAULT_OPTIONS,
        max_date_shift_days=int(deid_doc.get("max_date_shift_days", 365)),
        mask_rules=rules,
        ocr=bool(deid_doc.get("ocr", False)),
        ocr_scope=str(deid_doc.get("ocr_scope", "masked")),
        ocr_match=str(deid_doc.get("ocr_match", "identifiers")),
        ocr_max_frames=int(deid_doc.get("ocr_max_frames", 3)),
    )


def _files(inputs: list[str]) -> Iterator[Path]:
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        key = PseudonymKey.from_env()
        policy = policy_for(args.trust, args.trusts_dir)
        deid = Deidentifier(key, policy)
    except DeidConfigError as exc:
        print(f"smartbox deidentify: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    held: Counter[str] = Counter()
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
            held["unreadable"] += 1
            held_files.append({"input": str(path), "reason": f"unreadable:{exc.errno}"})
            continue
        result = deid.process(raw)
        if result.reason != "unparseable":
            read_ok += 1
        if result.ok and result.data is not None:
            (args.out / f"{result.sop_instance_uid}.dcm").write_bytes(result.data)
            written += 1
            nhs_fallbacks += not result.nhs_number_valid
            masked += result.mask_rule is not None
        else:
            reason = result.reason or "unknown"
            held[reason] += 1
            held_files.append({"input": str(path), "reason": reason})

    summary = {
        "code_version": CODE_VERSION,
        "table_edition": TABLE_EDITION,
        "key_version": key.version,
        "trust": policy.trust_code,
        "options": sorted(policy.options),
        "files": total,
        "written": written,
        "held_back": sum(held.values()),
        "held_back_by_reason": dict(sorted(held.items())),
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
