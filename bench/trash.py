"""Deletions deferred until a benchmark's runs are over.

On this machine's root filesystem (ext4 mounted *without a journal*: ``dmesg``), creating a
file scans past every inode of its block group freed in the last ~30 s (``recently_deleted``
in ext4's ``find_inode_bit``: a journal-less ext4 will not reuse them that soon). Removing a
run's thousands of files just before the next run starts made that next run's receiver spend
~20 % of all CPU in ``open(O_CREAT)`` (perf, 2026-12-01): 187 against 351 inst/s for the same
receiver, depending only on whether another run had just been deleted. So a run's directory
is moved aside instead, and the pile is removed between runs only when it grows past
``limit_bytes``, followed by a pause that outlasts the 30 s, and at the end.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

#: ext4 avoids reusing an inode for 30 s after its deletion (35 if its table block is dirty)
QUIET_AFTER_DELETE_SECONDS = 36.0


class Trash:
    def __init__(self, root: Path, limit_bytes: int = 16 << 30) -> None:
        self.root = root / f".trash-{uuid.uuid4().hex[:8]}"  # made on the first add
        self.limit = limit_bytes
        self.bytes = 0

    def add(self, path: Path) -> None:
        """Move ``path`` aside (same filesystem: a rename); empty the pile if it is too big."""
        if not path.exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.bytes += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        os.rename(path, self.root / uuid.uuid4().hex)
        if self.bytes > self.limit:
            self.empty(wait=True)

    def empty(self, wait: bool = False) -> None:
        if not self.root.exists():
            return
        for entry in list(self.root.iterdir()):
            shutil.rmtree(entry, ignore_errors=True)
        self.bytes = 0
        if wait:
            print(f"(deleted old runs; waiting {QUIET_AFTER_DELETE_SECONDS:.0f} s)", flush=True)
            time.sleep(QUIET_AFTER_DELETE_SECONDS)

    def close(self) -> None:
        self.empty()
        shutil.rmtree(self.root, ignore_errors=True)
