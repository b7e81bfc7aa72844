"""``smartbox clinical submit``: validate a file, pseudonymise its rows, publish them.

Every row is checked (``validate``); a row with any problem is held back and reported with
every problem it has (file, row, field, reason; never a value), and the rest go on: one bad
row does not stop a file. Two rows with the same record id (same patient and record key) are
one record given twice: the later one is held back (``duplicate_record``). Valid rows become
``clinical.record`` v1 (``record``) and are published as ``clinical.arrived.<trust>`` with
publisher confirms; then a ``clinical.submitted`` says what was held back, by reason. Message
ids are derived from the submission and the row, and record ids from the patient: submitting
the same file twice changes nothing downstream.

Exit status: 0 every row accepted; 3 some row held back (the rest was published); 2 an
operator's mistake (unknown trust, unreadable file, unknown column, no key); 1 the broker is
unavailable (nothing after the failure was published; submitting again is safe).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TextIO

import schemas
from consumers.deid.policy import PolicyBuilder
from smartbox.bus import Bus
from smartbox.keys import RegionalKey
from smartbox.trusts import TrustConfig

from .record import ClinicalPseudonymiser, Pseudonymised
from .rows import read_rows
from .validate import Problem, ValidRow, check_row

log = logging.getLogger(__name__)
_MESSAGE_NS = uuid.UUID("2f1d8a4e-9b3c-4c7a-8e55-0d6a1b7c9e21")
EXIT_HELD_BACK = 3


@dataclass
class Submission:
    """What a file gave: the records to publish and the rows held back with their problems."""

    submission_id: str
    rows: int = 0
    records: list[Pseudonymised] = field(default_factory=list)
    held: dict[int, list[Problem]] = field(default_factory=dict)

    @property
    def reasons(self) -> Counter[str]:
        """Held-back rows by the reason of their first problem (one row counts once)."""
        return Counter(problems[0].reason for problems in self.held.values())


def prepare(
    path: Path,
    trust: TrustConfig,
    key: RegionalKey,
    policies: PolicyBuilder,
    today: date | None = None,
) -> Submission:
    """Read, check and pseudonymise a file (nothing published). ConfigError for a problem
    with the file or the configuration."""
    # the trust's policy exactly as the anonymiser builds it (OCR is not needed here)
    policy = policies.for_trust(trust, runnable=False)
    pseudo = ClinicalPseudonymiser(key, policy)
    rows = read_rows(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = Submission(key.opaque_id("clinical-submission", f"{trust.code}:{digest}"), len(rows))
    seen: set[str] = set()
    for row in rows:
        checked = check_row(row, today)
        if not isinstance(checked, ValidRow):
            out.held[row.number] = checked
            continue
        made = pseudo.record(checked)
        if made.record["record_id"] in seen:
            out.held[row.number] = [Problem("record_key", "duplicate_record")]
            continue
        seen.add(made.record["record_id"])
        out.records.append(made)
    return out


def publish(bus: Bus, trust: str, submission: Submission) -> None:
    """Each record as ``clinical.arrived``, then the ``clinical.submitted`` report (each
    confirmed by the broker before the next)."""
    producer = schemas.producer_name("clinical", trust)
    correlation = str(uuid.UUID(submission.submission_id))
    for made in submission.records:
        bus.publish(
            schemas.make_message(
                "clinical.arrived",
                trust=trust,
                producer=producer,
                correlation_id=correlation,
                message_id=str(uuid.uuid5(_MESSAGE_NS, f"{submission.submission_id}:{made.row}")),
                body={
                    "submission_id": submission.submission_id,
                    "row": made.row,
                    "record": made.record,
                },
            )
        )
    reasons = submission.reasons
    bus.publish(
        schemas.make_message(
            "clinical.submitted",
            trust=trust,
            producer=producer,
            correlation_id=correlation,
            message_id=str(uuid.uuid5(_MESSAGE_NS, f"{submission.submission_id}:submitted")),
            body={
                "submission_id": submission.submission_id,
                "rows": submission.rows,
                "accepted": len(submission.records),
                "held_back": len(submission.held),
                "held_back_reasons": dict(sorted(reasons.items())),
                "held_back_rows": [
                    {"row": n, "field": problems[0].field, "reason": problems[0].reason}
                    for n, problems in sorted(submission.held.items())
                ][:1000],
            },
        )
    )


def report(path: Path, submission: Submission, out: TextIO) -> None:
    """Every held-back row, every problem (``FILE: row N: field F: reason``), and a summary."""
    for number, problems in sorted(submission.held.items()):
        for p in problems:
            print(f"{path}: row {number}: field {p.field}: {p.reason}", file=out)
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(submission.reasons.items()))
    print(
        f"{path}: {submission.rows} rows: {len(submission.records)} accepted, "
        f"{len(submission.held)} held back{f' ({reasons})' if reasons else ''}",
        file=out,
    )


def run(
    path: Path,
    trust: TrustConfig,
    *,
    key: RegionalKey,
    policies: PolicyBuilder,
    bus: Callable[[], Bus] | None,
    out: TextIO,
) -> int:
    """The command: prepare, publish (unless ``bus`` is None: a dry run), report; exit status."""
    submission = prepare(path, trust, key, policies)
    if bus is not None:
        b = bus()
        b.declare()  # the clinical queue exists before the first record is published
        publish(b, trust.code, submission)
    log.info(
        "%s: clinical submission %s: %d rows, %d published, %d held back",
        trust.code,
        submission.submission_id,
        submission.rows,
        len(submission.records) if bus is not None else 0,
        len(submission.held),
    )
    report(path, submission, out)
    return EXIT_HELD_BACK if submission.held else 0
