"""``smartbox deidentify INPUT... --out DIR [--trust CODE] [--strict] [--progress] [--workers N]``

Runs exactly the pipeline's de-identification (the trust's policy from the one builder, the
one key loader, table, pixel gate, verification gate) on files or folders, so a trust's
governance lead can try the profile on sample data. Writes the de-identified instances to DIR
as ``<SOPInstanceUID>.dcm`` and ``DIR/summary.json``.

Nothing is silently overwritten: an input giving the same instance, byte for byte, as an
earlier one is a *duplicate* (counted, listed, written once); one giving other bytes under the
same pseudonymous UID (another version of the instance) is a *collision* (written beside it as
``<SOPInstanceUID>-<sha16>.dcm``, as the pipeline stages every version). Progress goes to
stderr on a terminal or with ``--progress``; the held-back files are printed with their
reasons, as in ``summary.json``.

Files are de-identified by ``--workers`` processes (default: one per CPU this process may use,
fewer for a handful of files), each forked once the policy and key are loaded; what they give
back is taken in input order, so which input is the first of an instance, and every output
name, is the same whatever the number of workers.

Exit status: 0 done; 1 nothing could be read; 2 configuration error (no key, bad trust
file, an output folder that cannot be written); 3 something was held back and ``--strict``
was given; 130 interrupted (Ctrl-C: what was written so far stays, without ``summary.json``).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from consumers.deid.config import DeidPolicy, PseudonymKey
from consumers.deid.deidentifier import Deidentifier
from consumers.deid.identity import Fingerprint, outliers
from consumers.deid.policy import PolicyBuilder
from consumers.deid.reasons import Reason
from consumers.deid.table import CODE_VERSION, TABLE_EDITION
from smartbox import logs
from smartbox.errors import ConfigError
from smartbox.process import freeze_startup_objects
from smartbox.settings import environment
from smartbox.trusts import load_trust


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
    p.add_argument(
        "--progress",
        action="store_true",
        help="show progress on stderr even when it is not a terminal (on one, it is shown)",
    )
    p.add_argument(
        "--workers",
        type=_workers_arg,
        default=0,
        metavar="N",
        help="processes de-identifying files (default 0: one per CPU, fewer for few files)",
    )
    return p


def _workers_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= 256:
        raise argparse.ArgumentTypeError(f"expected a number of processes, 0 to 256: {text!r}")
    return n


#: files a worker process should have to itself before another one is worth forking
FILES_PER_WORKER = 25


def worker_count(requested: int, files: int) -> int:
    """``requested`` if given, else one per CPU this process may run on, no more than one per
    ``FILES_PER_WORKER`` files (forking costs more than a few files take)."""
    if requested:
        return max(1, min(requested, files))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, files // FILES_PER_WORKER))


def policy_for(
    trust: str | None, trusts_dir: Path, environ: dict[str, str] | None = None
) -> DeidPolicy:
    """The policy the pipeline applies to ``trust`` (its trust file, validated as every process
    validates it, and the deployment's defaults): the one builder, ``policy.PolicyBuilder``."""
    builder = PolicyBuilder.from_env(environ)
    if not trust:
        return builder.local()
    return builder.for_trust(load_trust(trusts_dir, trust))


def _files(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    return files


class _Progress:
    """``deidentify: 120/400 files (30%)`` on stderr: rewritten in place on a terminal, one
    line per percent otherwise (``--progress`` into a log); silent unless one of the two."""

    def __init__(self, total: int, enabled: bool, tty: bool) -> None:
        self.total, self.enabled, self.tty = total, enabled, tty
        self._shown = -1

    def update(self, done: int) -> None:
        if not self.enabled or not self.total:
            return
        percent = done * 100 // self.total
        if percent == self._shown and done != self.total:
            return
        self._shown = percent
        line = f"deidentify: {done}/{self.total} files ({percent}%)"
        end = "\n" if not self.tty or done == self.total else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


@dataclass
class _Run:
    """What one run did: outputs by name (to find duplicates and collisions), counts, lists."""

    out: Path
    #: name: (sha256 of its bytes, or "" until a second output wants the name; input)
    outputs: dict[str, tuple[str, str]] = field(default_factory=dict)
    held: Counter[Reason] = field(default_factory=Counter)
    held_files: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    collisions: list[dict[str, str]] = field(default_factory=list)
    total: int = 0
    read_ok: int = 0
    de_identified: int = 0
    nhs_fallbacks: int = 0
    masked: int = 0
    #: study UID -> (input, identity fingerprints) of its instances (the study check)
    studies: dict[str, list[tuple[Path, Fingerprint | None]]] = field(default_factory=dict)

    def hold(self, path: Path, reason: Reason, detail: str | None = None) -> None:
        self.held[reason] += 1
        item = {"input": str(path), "reason": reason.value}
        if detail:
            item["detail"] = detail
        self.held_files.append(item)

    def adopt(self, path: Path, uid: str, written: Path) -> None:
        """Give an output (``written``, a scratch file) its name, never over another input's:
        the same bytes again are a duplicate (dropped, not written twice); other bytes under
        the same UID, a collision (kept beside it as ``<uid>-<sha16>.dcm``, as the pipeline
        stages every version of an instance).

        Digests are taken only when a name is wanted twice (the first output's from its
        file): hashing every 0.5 MB output cost ~0.5 ms a file, 15 % of de-identifying it,
        for the rare duplicate."""
        name = f"{uid}.dcm"
        first = self.outputs.get(name)
        if first is not None:
            digest = hashlib.sha256(written.read_bytes()).hexdigest()
            if self._digest(name) == digest:
                self.duplicates.append({"input": str(path), "same_as": first[1]})
                written.unlink()
                return
            self.collisions.append({"input": str(path), "same_uid_as": first[1]})
            name = f"{uid}-{digest[:16]}.dcm"
            if name in self.outputs:  # this version too was written already
                self.duplicates.append({"input": str(path), "same_as": self.outputs[name][1]})
                written.unlink()
                return
            os.replace(written, self.out / name)
            self.outputs[name] = (digest, str(path))
            return
        os.replace(written, self.out / name)
        self.outputs[name] = ("", str(path))

    def _digest(self, name: str) -> str:
        """The sha256 of output ``name``, from the file written (once, then remembered)."""
        digest, source = self.outputs[name]
        if not digest:
            digest = hashlib.sha256((self.out / name).read_bytes()).hexdigest()
            self.outputs[name] = (digest, source)
        return digest


@dataclass(frozen=True)
class _Outcome:
    """What de-identifying one input gave, as a worker hands it back: no element values (the
    identity fingerprints are keyed hashes); the output itself, if any, in scratch file
    ``written``."""

    path: Path
    unreadable: str | None = None  # errno name: the input could not be read
    parsed: bool = False
    reason: Reason | None = None
    detail: str | None = None
    study_uid: str | None = None
    identity: Fingerprint | None = None
    sop_instance_uid: str | None = None
    nhs_number_valid: bool = False
    masked: bool = False
    written: Path | None = None


#: (engine, scratch folder) of this process: set before the workers fork, so they share it
_ENGINE: tuple[Deidentifier, Path] | None = None


def _deidentify(job: tuple[int, Path]) -> _Outcome:
    """De-identify input number ``index``; a written output goes to ``scratch/<index>.dcm``
    (an OSError writing it ends the run: it is the output folder's fault, not the input's)."""
    assert _ENGINE is not None
    deid, scratch = _ENGINE
    index, path = job
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return _Outcome(path, unreadable=errno.errorcode.get(exc.errno or 0, "EIO"))
    result = deid.process(raw)
    written = None
    if result.ok and result.data is not None and result.sop_instance_uid:
        written = scratch / f"{index}.dcm"
        written.write_bytes(result.data)
    return _Outcome(
        path,
        parsed=result.reason != Reason.UNPARSEABLE,
        reason=result.reason,
        detail=result.detail,
        study_uid=result.study_uid,
        identity=result.identity,
        sop_instance_uid=result.sop_instance_uid,
        nhs_number_valid=result.nhs_number_valid,
        masked=result.mask_rule is not None,
        written=written,
    )


def _worker_setup() -> None:
    """A worker leaves Ctrl-C to the command (which stops the pool: no worker tracebacks).
    And in a forked worker glibc serves each 0.5 MB buffer from a fresh mmap (10x the page
    faults of a plain process, ~25 % slower: ``bench/deid/RESULTS.md``); keep them on the heap."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 8 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 32 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: its defaults


@contextmanager
def _outcomes(
    deid: Deidentifier, scratch: Path, files: list[Path], workers: int
) -> Iterator[Iterator[_Outcome]]:
    """Every input's outcome, in input order: in this process, or from ``workers`` forked
    ones (stopped when the block ends, finished or not)."""
    global _ENGINE
    _ENGINE = (deid, scratch)
    jobs = list(enumerate(files))
    try:
        if workers <= 1:
            yield map(_deidentify, jobs)
            return
        freeze_startup_objects()  # else the collector writes to every inherited object
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_setup)
        try:
            yield pool.imap(_deidentify, jobs, chunksize=4)
        finally:
            pool.terminate()
            pool.join()
    finally:
        _ENGINE = None


def _record(run: _Run, outcome: _Outcome) -> None:
    path = outcome.path
    if outcome.unreadable is not None:
        run.hold(path, Reason.UNREADABLE, outcome.unreadable)
        return
    run.read_ok += outcome.parsed
    if outcome.study_uid:
        run.studies.setdefault(outcome.study_uid, []).append((path, outcome.identity))
    if outcome.written is not None and outcome.sop_instance_uid:
        run.de_identified += 1
        run.nhs_fallbacks += not outcome.nhs_number_valid
        run.masked += outcome.masked
        run.adopt(path, outcome.sop_instance_uid, outcome.written)
    else:
        run.hold(path, outcome.reason or Reason.DEID_ERROR, outcome.detail)


def _study_check(run: _Run) -> None:
    """The pipeline's study consistency check (``consumers/identity_check.py``): the files of
    a study that disagree on who the patient is are held back, their outputs removed."""
    for members in run.studies.values():
        odd = outliers([identity for _path, identity in members])
        inputs = {str(path) for (path, _identity), o in zip(members, odd, strict=True) if o}
        if not inputs:
            continue
        for name, (_digest, source) in list(run.outputs.items()):
            if source in inputs:
                (run.out / name).unlink(missing_ok=True)
                del run.outputs[name]
                run.de_identified -= 1
                run.hold(Path(source), Reason.PATIENT_IDENTITY_CONFLICT)


def _report(run: _Run) -> None:
    """What the governance lead reads: totals, what was not written and why, every file
    held back with its reason (the same lists as ``summary.json``)."""
    print(f"{run.de_identified} of {run.total} file(s) de-identified into {run.out}")
    if run.duplicates or run.collisions:
        print(
            f"{len(run.outputs)} instance(s) written: {len(run.duplicates)} duplicate(s) (the "
            f"same instance as another input, written once), {len(run.collisions)} "
            "collision(s) (another version of an instance: written beside it as UID-sha.dcm)"
        )
        for item in run.collisions:
            print(f"collision  {item['input']}  same SOP Instance UID as  {item['same_uid_as']}")
    if run.held:
        width = max(len(r) for r in run.held)
        print(f"{'held back: reason'.ljust(width)}  count")
        for reason, count in sorted(run.held.items()):
            print(f"{reason.ljust(width)}  {count:5d}")
        print("held back: input  reason  (detail)")
        for item in run.held_files:
            detail = f"  ({item['detail']})" if item.get("detail") else ""
            print(f"{item['input']}  {item['reason']}{detail}")


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
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        scratch = Path(os.path.join(args.out, f".deidentify-{os.getpid()}"))
        scratch.mkdir(exist_ok=True)
    except OSError as exc:
        print(f"smartbox deidentify: cannot write to {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    own = args.out.resolve()
    files = [p for p in _files(args.inputs) if p.resolve().parent != own]  # not our output
    run = _Run(args.out, total=len(files))
    tty = sys.stderr.isatty()
    progress = _Progress(len(files), args.progress or tty, tty)
    done = 0
    try:
        with _outcomes(deid, scratch, files, worker_count(args.workers, len(files))) as outcomes:
            for done, outcome in enumerate(outcomes, 1):
                _record(run, outcome)
                progress.update(done)
    except OSError as exc:  # writing an output (a full disk): the inputs are not at fault
        print(f"smartbox deidentify: cannot write to {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nsmartbox deidentify: interrupted after {done} of {len(files)} file(s); "
            f"{len(run.outputs)} written to {args.out}, no summary.json",
            file=sys.stderr,
        )
        return 130
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _study_check(run)

    summary = {
        "code_version": CODE_VERSION,
        "table_edition": TABLE_EDITION,
        "key_version": key.version,
        "trust": policy.trust_code,
        "options": sorted(policy.options),
        "files": run.total,
        "de_identified": run.de_identified,
        "written": len(run.outputs),
        "duplicates": len(run.duplicates),
        "collisions": len(run.collisions),
        "held_back": sum(run.held.values()),
        "held_back_by_reason": {r.value: n for r, n in sorted(run.held.items())},
        "nhs_number_fallbacks": run.nhs_fallbacks,
        "pixels_masked": run.masked,
        "mask_rules": len(policy.mask_rules),
        "ocr": policy.ocr,
        "held_back_files": run.held_files,
        "duplicate_files": run.duplicates,
        "collision_files": run.collisions,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    _report(run)
    if run.read_ok == 0:
        print("smartbox deidentify: nothing could be read", file=sys.stderr)
        return 1
    if run.held and args.strict:
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
