"""Logging set-up: one line per event, key=value, no patient data.

Callers log opaque ids (study keys, message ids), trust codes and counts only. The formatter
does not try to scrub: keeping identifiers out of log calls is a rule enforced in review and by
the end-to-end test that scans captured logs for planted identifiers.
"""

from __future__ import annotations

import logging
import os
import sys


def setup(role: str, level: str | None = None) -> None:
    """Configure the root logger for a smartbox process."""
    lvl = (level or os.environ.get("SMARTBOX_LOG_LEVEL", "INFO")).upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {role} %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)
    # pika and pynetdicom are chatty at INFO and pynetdicom logs dataset contents at DEBUG
    for noisy in ("pika", "pynetdicom", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
