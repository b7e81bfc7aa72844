"""The receiver's own key: its opaque ids (``study_key``, ``instance_key``) never rotate.

The receiver names what it keeps (ledger rows, quarantine objects) by HMACs of the trust and
the original UIDs, and finds a re-sent instance by them. Those ids never leave the box and are
not pseudonyms, so they need not, and must not, change when the pseudonymisation key is
rotated: a study re-sent after a rotation would otherwise look new to the ledger and be stored,
announced and exported a second time. So they are keyed by a secret of the receiver's own,
kept beside the ledger it serves (``<spool>/<trust>/intake.key``, mode 0600): created at
random on the first start; on the first start of a receiver whose ledger already exists (one
from before this key), the pseudonymisation key it ran with is adopted once, so that ledger's
ids keep matching. The file lives and dies with the ledger: a lost spool loses both.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from smartbox.errors import ConfigError
from smartbox.keys import MIN_KEY_BYTES, RegionalKey

FILE_NAME = "intake.key"
LEDGER_NAME = "ledger.sqlite3"


def load(spool_root: Path, adopt: Callable[[], RegionalKey]) -> RegionalKey:
    """The receiver's key for the spool at ``spool_root`` (``<spool>/<trust>``), created if
    needed; ``adopt`` gives the pseudonymisation key to take over for an existing ledger."""
    path = spool_root / FILE_NAME
    try:
        secret = path.read_bytes().strip()
    except FileNotFoundError:
        secret = b""
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if secret:
        if len(secret) < MIN_KEY_BYTES:
            raise ConfigError(f"{path}: the receiver's key is too short (corrupt?)")
        return RegionalKey(secret, "intake")
    if (spool_root / LEDGER_NAME).exists():
        secret = adopt().secret  # a ledger from before this key: its ids must keep matching
    else:
        secret = secrets.token_hex(32).encode("ascii")
    spool_root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(spool_root, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return RegionalKey(secret, "intake")
