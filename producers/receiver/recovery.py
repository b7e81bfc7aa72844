"""Start-up recovery of a spool: make the ledger and the files agree again after a crash.

Part of ``Spool`` (a mixin: it works on the spool's files and its ledger connection); run by
the receiver process before any SCP accepts an association.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path

from smartbox.inflate import InflateLimitExceeded, InflateLimits

from . import intake

log = logging.getLogger(__name__)

PENDING = ("spooled", "batched", "uploaded")
# A ``lost`` row stands for bytes that are no longer anywhere: the same bytes received (or found)
# again revive it as a new ``spooled`` instance instead of being taken for a duplicate.
_RECORD = """
INSERT INTO instances (study_key, instance_key, sha256, size, path, modality, received_at,
    calling_ae, move_originator, acquired_days)
VALUES (?,?,?,?,?,?,?,?,?,?)
ON CONFLICT (instance_key, sha256) DO UPDATE SET
    study_key=excluded.study_key, size=excluded.size, path=excluded.path,
    modality=excluded.modality, received_at=excluded.received_at, state='spooled', batch_id=NULL,
    calling_ae=excluded.calling_ae, move_originator=excluded.move_originator,
    acquired_days=excluded.acquired_days
WHERE instances.state='lost'
"""
_KEY = re.compile(r"^[0-9a-f]{32}$")
_NAME = re.compile(r"^([0-9a-f]{32})-([0-9a-f]{16})\.dcm$")
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")


class SpoolRecovery:
    root: Path
    files: Path
    tmp: Path
    _db: sqlite3.Connection
    _lock: threading.RLock

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def recover(self) -> tuple[int, int, int]:
        """Make the ledger and the files agree again after a crash; returns (files removed,
        files adopted, rows lost).

        Half-received datasets in ``tmp/`` are removed (never acknowledged). A file in place
        without a ledger row is adopted: its row may have been lost with the page cache after
        the C-STORE was answered (intake commits do not fsync), and adopting an instance that
        was never acknowledged is harmless (the sender's resend becomes a duplicate). A file of
        an already published instance (a crash between the commit and the unlink) is removed.
        Rows whose file vanished are marked ``lost``, counted and logged.
        """
        removed = adopted = 0
        for entry in self.tmp.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        with self._lock:
            known = {
                row[0]
                for row in self._db.execute(
                    "SELECT path FROM instances WHERE state IN (?,?,?)", PENDING
                )
            }
        for study_dir in self.files.iterdir():
            for f in study_dir.iterdir() if study_dir.is_dir() else ():
                if str(f) in known:
                    continue
                if self._adopt(study_dir.name, f):
                    adopted += 1
                else:
                    f.unlink(missing_ok=True)
                    removed += 1
        lost = self.mark_lost(p for p in known if not os.path.exists(p))
        return removed, adopted, lost

    def mark_lost(self, paths: Iterable[str]) -> int:
        """Mark the rows of vanished files ``lost`` and take them off the totals; how many.

        A lost row is never a duplicate: when the sender sends the instance again it is stored
        and announced like any other (``record_instance`` revives the row).
        """
        lost = 0
        with self._tx() as db:
            for p in paths:
                row = db.execute(
                    "UPDATE instances SET state='lost' WHERE path=? AND state IN (?,?,?)"
                    " RETURNING size",
                    (p, *PENDING),
                ).fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE totals SET files=files-1, bytes=bytes-? WHERE id=1", (row[0],)
                    )
                    lost += 1
        if lost:
            log.error("spool %s: %d ledger rows have no file (disk fault?)", self.root, lost)
        return lost

    def _adopt(self, study_key: str, path: Path) -> bool:
        match = _NAME.match(path.name)
        if not match or not _KEY.match(study_key):
            return False
        instance_key, prefix = match.groups()
        with self._lock:
            seen = self._db.execute(
                "SELECT 1 FROM instances WHERE instance_key=? AND substr(sha256, 1, 16)=?"
                " AND state<>'lost'",
                (instance_key, prefix),
            ).fetchone()
        if seen:
            return False  # published already: this file is a leftover
        digest, size, head = _hash_file(path)
        if not digest.startswith(prefix):
            return False  # not what its name says: never acknowledged as such
        modality = _modality(path, size, head)
        received = path.stat().st_mtime
        with self._tx() as db:
            record_instance(
                db,
                study_key=study_key,
                instance_key=instance_key,
                sha256=digest,
                size=size,
                path=path,
                modality=modality,
                received_at=received,
            )
        log.warning("spool %s: adopted an instance whose ledger row was lost", self.root)
        return True


def record_instance(
    db: sqlite3.Connection,
    *,
    study_key: str,
    instance_key: str,
    sha256: str,
    size: int,
    path: Path,
    modality: str,
    received_at: float,
    calling_ae: str = "",
    move_originator: str = "",
    acquired_days: int | None = None,
) -> bool:
    """Record an instance in the ledger (inside a transaction), reviving its ``lost`` row if
    it had one, and count it in the totals; False if the same bytes are recorded already.
    ``acquired_days``: days from its acquisition to its arrival, None if not read at intake
    (the relay then reads the file, ``acquired.acquired_on``)."""
    cur = db.execute(
        _RECORD,
        (
            study_key,
            instance_key,
            sha256,
            size,
            str(path),
            modality,
            received_at,
            calling_ae,
            move_originator,
            acquired_days,
        ),
    )
    if cur.rowcount != 1:
        return False
    db.execute("UPDATE totals SET files=files+1, bytes=bytes+? WHERE id=1", (size,))
    db.execute(
        "INSERT OR IGNORE INTO studies (study_key, first_received_at) VALUES (?,?)",
        (study_key, received_at),
    )
    return True


def _modality(path: Path, size: int, head: bytes) -> str:
    """The Modality of an adopted file ("OT" if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            found = intake.read_file(f.fileno(), size, head, InflateLimits())
    except (OSError, InflateLimitExceeded):
        found = None
    return found.modality if found and _MODALITY.match(found.modality) else "OT"


def _hash_file(path: Path) -> tuple[str, int, bytes]:
    """(sha256 hex, size, first 64 KiB) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size, head = 0, b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if not head:
                head = chunk[: 64 * 1024]
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size, head
