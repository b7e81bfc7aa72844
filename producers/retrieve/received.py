"""What the trust's receiver already holds, read from its ledger (read-only).

Idempotence across everything that can bring a study in: a study the PACS pushed, one a
previous cohort retrieved, or the part of a study a crashed move delivered, are all in the
receiver's ledger under its opaque keys (``producers.receiver.scp``: HMACs under the
receiver's own key, ``intake.key`` beside the ledger). The cohort process runs on the
receiver's host, computes the same keys and asks the ledger; it never writes to it.

The ledger remembers published instances for the trust's ``ledger_retention_days``; the
cohort database remembers what it retrieved for ever, so neither forgetting re-fetches.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from producers.receiver.intake_key import FILE_NAME, LEDGER_NAME
from producers.receiver.scp import instance_key_for, study_key_for
from smartbox.keys import MIN_KEY_BYTES, RegionalKey


class ReceiverLedger:
    """Read-only view of ``<spool>/<trust>/ledger.sqlite3`` (absent: nothing received)."""

    def __init__(self, spool_root: Path, trust: str) -> None:
        self.root = spool_root
        self.trust = trust

    def _key(self) -> RegionalKey | None:
        try:
            secret = (self.root / FILE_NAME).read_bytes().strip()
        except OSError:
            return None
        return RegionalKey(secret, "intake") if len(secret) >= MIN_KEY_BYTES else None

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        path = self.root / LEDGER_NAME
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def study_instances(self, study_uid: str) -> int:
        """How many distinct instances of the study the receiver holds (0: none, or no
        ledger yet)."""
        key = self._key()
        if key is None:
            return 0
        rows = self._query(
            "SELECT COUNT(DISTINCT instance_key) FROM instances WHERE study_key=?"
            " AND state<>'lost'",
            (study_key_for(key, self.trust, study_uid),),
        )
        return int(rows[0][0]) if rows else 0

    def missing(self, sop_uids: Iterable[str]) -> list[str]:
        """The SOP Instance UIDs the receiver does not hold."""
        uids = list(sop_uids)
        key = self._key()
        if key is None:
            return uids
        by_key = {instance_key_for(key, self.trust, u): u for u in uids}
        held: set[str] = set()
        keys = list(by_key)
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            held.update(
                r[0]
                for r in self._query(
                    f"SELECT instance_key FROM instances WHERE instance_key IN ({marks})"  # noqa: S608 - placeholders only
                    " AND state<>'lost'",
                    tuple(chunk),
                )
            )
        return [u for k, u in by_key.items() if k not in held]
