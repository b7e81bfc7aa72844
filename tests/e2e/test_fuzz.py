"""The fuzz run: thousands of mutated datasets over real DICOM associations to real receiver
processes (``smartbox receive``), with the real anonymiser running, on real RabbitMQ and
SeaweedFS. The corpus (``helpers.fuzz``) is seeded: ``SMARTBOX_FUZZ_SEED`` and
``SMARTBOX_FUZZ_N`` (default 2,000 C-STOREs) override it for longer runs by hand.

Asserted: no process crashed or logged a traceback; every C-STORE was answered; every
accepted instance (distinct as the receiver counts them) ends staged or held back with a
reason, in study.staged and in the staging manifests, per trust; nothing was dead-lettered;
peak RSS stayed bounded; no planted identifier or original UID in any staged object, manifest,
message or log. Every check is collected and all are reported together, with the counts
printed even when pytest captures output.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers.fuzz import CLEAN_KINDS, DEFAULT_SEED, Case, Corpus, build_corpus
from helpers.fuzz_report import (
    dataset_text,
    drain,
    find_leaks,
    peak_rss_mib,
    process_tree,
    queue_depth,
    read_objects,
    scrub,
    tracebacks,
)
from helpers.pipeline import Pipeline
from helpers.raw_scu import Answer, RawSCU, send_all
from helpers.receiver_e2e import declare_topology, wait_dicom_port

from producers.receiver import dimse

SEED = int(os.environ.get("SMARTBOX_FUZZ_SEED", DEFAULT_SEED))
N = int(os.environ.get("SMARTBOX_FUZZ_N", "2000"))
TRUSTS = ("FZA", "FZB")
RSS_LIMIT_MIB = 600
SETTLE_SECONDS = 150
Identity = tuple[str, str, str, str]


@dataclass
class Findings:
    corpus: Corpus
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        self.failures.append(scrub(text, self.corpus.identifiers, self.corpus.uids))

    def say(self, text: str) -> None:
        self.lines.append("fuzz: " + scrub(text, self.corpus.identifiers, self.corpus.uids))


def status_name(answer: Answer) -> str:
    return f"0x{answer.status:04X}" if answer.status is not None else "unanswered"


def source_digest(case: Case) -> str | None:
    """The digest in the receiver's object name for this case (``<instance>-<sha16>.dcm``):
    sha256 of the File Meta it writes in front of the bytes as received, and those bytes."""
    try:
        meta = dimse.file_meta(case.sop_class, case.receiver_identity()[0], case.syntax)
    except (UnicodeError, ValueError):
        return None
    return hashlib.sha256(meta + case.data).hexdigest()[:16]


def object_digest(key: str) -> str:
    return key.rsplit("/", 1)[-1].rsplit("-", 1)[-1][:16]


def send(p: Pipeline, by_trust: dict[str, list[Case]]) -> dict[str, list[Answer]]:
    """Each trust's cases over its own associations (100 C-STOREs each), trusts in parallel."""

    def one(code: str) -> list[Answer]:
        scu = RawSCU("127.0.0.1", p.trusts[code], f"{code}_PACS", f"SMARTBOX_{code}")
        return send_all(scu, by_trust[code], per_association=100)

    with ThreadPoolExecutor(len(by_trust)) as pool:
        return dict(zip(by_trust, pool.map(one, by_trust), strict=True))


def settle(p: Pipeline, expected: dict[str, int], timeout: float) -> list[str]:
    """Wait until each receiver announced all it received and the anonymiser settled every
    announced batch (acked or dead-lettered); what had not settled when time ran out."""
    deadline, waiting = time.monotonic() + timeout, ["nothing polled"]
    while waiting and time.monotonic() < deadline:
        waiting, batches = [], 0.0
        for code, count in expected.items():
            name = f"receiver-{code}"
            received = p.metric(name, "smartbox_instances_received_total", trust=code)
            published = p.metric(name, "smartbox_instances_published_total", trust=code)
            spooled = p.metric(name, "smartbox_spool_files", trust=code)
            batches += p.metric(name, "smartbox_studies_arrived_total", trust=code)
            if received < count or published < received or spooled:
                waiting.append(
                    f"{code}: received {received:.0f} of {count}, announced {published:.0f}, "
                    f"spooled {spooled:.0f}"
                )
        acked = p.metric("anonymiser", "smartbox_messages_total", stage="anonymiser", outcome="ack")
        dead = queue_depth(p, f"{p.namespace}.anonymiser.dlq") or 0
        ready = queue_depth(p, f"{p.namespace}.anonymiser") or 0
        if acked + dead < batches or ready:
            waiting.append(f"anonymiser: {acked:.0f} acked + {dead} dead of {batches:.0f} batches")
        if waiting:
            time.sleep(0.5)
    return waiting


def check_processes(p: Pipeline, f: Findings) -> None:
    rss = []
    for name, proc in p.procs.items():
        if proc.popen.poll() is not None:
            f.fail(f"{name} exited with {proc.popen.returncode}")
            continue
        peaks = [peak_rss_mib(pid) for pid in process_tree(proc.popen.pid)]
        rss.append(f"{name} {'/'.join(f'{v:.0f}' for v in peaks)}")
        if max(peaks) > RSS_LIMIT_MIB:
            f.fail(f"{name}: peak RSS {max(peaks):.0f} MiB > {RSS_LIMIT_MIB} MiB")
        if name.startswith("receiver-"):
            code = name.split("-", 1)[1]
            exits = p.metric(
                name, "smartbox_failures_total", trust=code, stage="receive", kind="worker_exit"
            )
            if exits:
                f.fail(f"{name}: {exits:.0f} SCP worker processes exited")
    f.say("peak RSS MiB (process/workers): " + ", ".join(rss))


def check_dead_letters(p: Pipeline, f: Findings) -> None:
    depth = queue_depth(p, f"{p.namespace}.anonymiser.dlq") or 0
    if depth:
        dead = drain(p, f"{p.namespace}.anonymiser.dlq")
        reasons = Counter(str(h.get("x-smartbox-reason", "?"))[:160] for _b, h in dead)
        instances = sum(int(b["body"].get("instance_count", 0)) for b, _h in dead)
        f.fail(f"{depth} study.arrived dead-lettered ({instances} instances): {dict(reasons)}")
    f.say(f"anonymiser DLQ depth {depth}")


def reconcile(
    p: Pipeline, f: Findings, accepted: dict[str, dict[Identity, Case]]
) -> tuple[list[str], list[dict[str, Any]]]:
    """accepted = staged + held back, per trust, in study.staged and in the manifests;
    returns the staged object keys and every manifest and message (for the leak scan)."""
    messages: dict[str, dict[str, Any]] = {}
    for body, _h in drain(p, f"{p.namespace}.exporter"):  # no exporter runs: they wait there
        messages.setdefault(body["body"]["batch_id"], body)
    by_digest = {source_digest(c): c for cases in accepted.values() for c in cases.values()}
    held_by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    clean_held: Counter[str] = Counter()
    staged_keys: list[str] = []
    documents: list[dict[str, Any]] = list(messages.values())
    for code, cases in accepted.items():
        keys = p.objects("staging", f"{code}/")
        staged_keys += [k for k in keys if k.endswith(".dcm")]
        manifests = list(
            read_objects(
                p, "staging", [k for k in keys if "/manifest-" in k and k.endswith(".json")]
            ).values()
        )
        manifests = [json.loads(m) for m in manifests]
        documents += manifests
        mine = [m["body"] for m in messages.values() if m["trust"] == code]
        staged = sum(b["instances_staged"] for b in mine)
        held = sum(b["instances_held_back"] for b in mine)
        reasons: Counter[str] = Counter()
        for b in mine:
            reasons.update(b["held_back_reasons"])
        files_staged = sum(len(m.get("instances", [])) for m in manifests)
        files_held = 0
        for entry in (e for m in manifests for e in m.get("held_back", [])):
            files_held += 1
            if not entry.get("reason"):
                f.fail(f"{code}: a held-back instance without a reason in its manifest")
            case = by_digest.get(object_digest(str(entry.get("source", ""))))
            detail = f"({entry['detail']})" if entry.get("detail") else ""
            kind = f"{case.kind}{'' if case.origin == 'synthetic' else '*'}" if case else "?"
            held_by_kind[kind][f"{entry.get('reason')}{detail}"] += 1
            if case and case.kind in CLEAN_KINDS and case.origin == "synthetic":
                clean_held[f"{case.kind} {case.syntax}: {entry.get('reason')}{detail}"] += 1
        f.say(
            f"{code}: accepted {len(cases)} distinct -> study.staged: {staged} staged + {held} "
            f"held back ({len(mine)} messages); manifests: {files_staged} + {files_held} "
            f"({len(manifests)}); held back by reason {dict(reasons.most_common())}"
        )
        for where, s, h in (
            ("study.staged", staged, held),
            ("manifests", files_staged, files_held),
        ):
            if s + h != len(cases):
                f.fail(
                    f"{code}: accepted {len(cases)} != {s} staged + {h} held back in {where} "
                    f"({len(cases) - s - h} unaccounted for)"
                )
    if clean_held:
        f.fail(f"valid synthetic CT instances held back: {dict(clean_held)}")
    f.say(
        "held back by kind (* pydicom file): "
        + "; ".join(f"{k} {dict(v.most_common())}" for k, v in sorted(held_by_kind.items()))
    )
    return staged_keys, documents


def check_quarantine(p: Pipeline, f: Findings, accepted: dict[str, dict[Identity, Case]]) -> None:
    """Every accepted instance is in quarantine under the digest of exactly the bytes sent:
    the wire carried the mutated bytes, not a re-encoding."""
    names = {
        object_digest(k)
        for code in accepted
        for k in p.objects("quarantine", f"{code}/")
        if k.endswith(".dcm")
    }
    cases = [c for cs in accepted.values() for c in cs.values()]
    missing = [c for c in cases if (d := source_digest(c)) is not None and d not in names]
    if missing:
        f.fail(f"{len(missing)} accepted instances not in quarantine byte for byte")


def check_leaks(p: Pipeline, f: Findings, staged_keys: list[str], docs: list[Any]) -> None:
    ids, uids = f.corpus.identifiers, f.corpus.uids
    staged = read_objects(p, "staging", staged_keys)
    leaks = find_leaks([dataset_text(b) for b in staged.values()], ids, uids)
    if leaks:
        f.fail(f"planted values in {leaks.where} staged objects: {dict(leaks.categories)}")
    leaks = find_leaks([json.dumps(d).encode() for d in docs], ids, uids)
    if leaks:
        f.fail(f"planted values in {leaks.where} manifests/messages: {dict(leaks.categories)}")
    for name, proc in p.procs.items():
        raw = proc.log.read_text(errors="replace")
        text = p.log_text(name)  # JSON lines decoded: escaped values and tracebacks as written
        lines = raw.splitlines() + text.splitlines()
        leaks = find_leaks([line.encode() for line in lines], ids, uids)
        if leaks:
            f.fail(f"{name} log: planted values on {leaks.where} lines: {dict(leaks.categories)}")
        found = tracebacks(text)
        if found:
            f.fail(f"{name} log: {sum(found.values())} tracebacks: {dict(found)}")
    f.say(f"{len(staged)} staged objects scanned for {len(ids)} planted values, {len(uids)} UIDs")


def test_fuzzed_datasets_over_real_associations(
    pipeline: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    p, corpus = pipeline, build_corpus(SEED, N)
    f = Findings(corpus)
    by_trust = {
        code: [c for c in corpus.cases if c.study % len(TRUSTS) == i]
        for i, code in enumerate(TRUSTS)
    }
    declare_topology(p)
    for code in TRUSTS:
        p.add_trust(code, quiet_seconds=2.0)
        p.start(f"receiver-{code}", "receive", "--trust", code)
    p.start("anonymiser", "anonymise")
    for code in TRUSTS:
        wait_dicom_port(p, code)
    times = {"start": time.monotonic()}
    answers = send(p, by_trust)
    times["send"] = time.monotonic()

    statuses: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    accepted: dict[str, dict[Identity, Case]] = {code: {} for code in TRUSTS}
    unanswered = []
    for code in TRUSTS:
        for case, answer in zip(by_trust[code], answers[code], strict=True):
            statuses[status_name(answer)] += 1
            by_kind[case.kind][status_name(answer)] += 1
            if answer.status == 0:
                accepted[code].setdefault(case.receiver_identity(), case)
            elif answer.status is None:
                unanswered.append(f"{case.kind} #{case.index}: {answer.note}")
    if unanswered:
        f.fail(f"{len(unanswered)} C-STOREs unanswered: {unanswered[:8]}")
    refused = Counter(
        f"{c.kind} {c.origin} {c.syntax}: {status_name(a)}"
        for code in TRUSTS
        for c, a in zip(by_trust[code], answers[code], strict=True)
        if c.kind in CLEAN_KINDS and a.status != 0
    )
    if refused:
        f.fail(f"valid instances not accepted: {dict(refused)}")
    digest = hashlib.sha256(b"".join(hashlib.sha256(c.data).digest() for c in corpus.cases))
    f.say(
        f"seed {SEED} (SMARTBOX_FUZZ_SEED), {len(corpus.cases)} C-STOREs (SMARTBOX_FUZZ_N) in "
        f"{len({c.study for c in corpus.cases})} studies over {len(TRUSTS)} trusts, "
        f"corpus sha256 {digest.hexdigest()[:16]}"
    )
    f.say(
        f"sent {sum(statuses.values())}: {dict(statuses.most_common())}; "
        f"{sum(map(len, accepted.values()))} distinct accepted (0x0000)"
    )
    f.say(
        "C-STORE status by kind: "
        + "; ".join(f"{k} {dict(v.most_common())}" for k, v in sorted(by_kind.items()))
    )

    waiting = settle(p, {code: len(accepted[code]) for code in TRUSTS}, SETTLE_SECONDS)
    if waiting:
        f.fail(f"the pipeline did not settle within {SETTLE_SECONDS} s: {waiting}")
    times["settle"] = time.monotonic()
    check_processes(p, f)
    check_dead_letters(p, f)
    staged_keys, documents = reconcile(p, f, accepted)
    check_quarantine(p, f, accepted)
    check_leaks(p, f, staged_keys, documents)
    times["checks"] = time.monotonic()
    steps = ", ".join(
        f"{step} {end - begin:.1f} s"
        for (step, end), begin in zip(times.items(), [started, *times.values()], strict=False)
    )
    f.say(f"times: {steps}; total {times['checks'] - started:.1f} s")
    with capsys.disabled():
        print("\n" + "\n".join([*f.lines, *(f"fuzz: FAILED {x}" for x in f.failures)]))
    failures = f.failures  # not the Findings: its corpus holds the planted values
    assert not failures, "\n".join(failures)
