"""When a study's instances were acquired, for the export's fairness (backfill or prospective).

Read by the relay from the spool files it is about to upload, never on the C-STORE path: the
first 64 KiB of each file, up to (0008,0023), by pydicom. The date is the Acquisition Date,
else the Content, Series or Study Date. Only a count of days leaves this module (in the
quarantine batch manifest: ``acquired_days_before_arrival``), never the date itself; a file
whose date cannot be read (deflated, unreadable, no date) makes the study's age unknown, which
the exporter treats as prospective.
"""

from __future__ import annotations

import io
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pydicom.filereader import read_partial

from . import header

PREFIX = 64 * 1024
_LAST_DATE = 0x00080023  # Content Date: every date we look at comes before it
_KEYWORDS = ("AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate")


def acquired_on(path: Path) -> date | None:
    """The acquisition date of one spooled instance, or None if it cannot be told cheaply."""
    try:
        with open(path, "rb") as f:
            head = f.read(PREFIX)
    except OSError:
        return None
    found = header.layout(head)
    if found is not None and found.syntax.deflated:
        return None  # inflating it here is not worth a fairness hint
    try:
        ds = read_partial(io.BytesIO(head), stop_when=lambda tag, _vr, _len: int(tag) > _LAST_DATE)
        for keyword in _KEYWORDS:
            value: Any = ds.get(keyword)
            text = str(value or "").strip()
            if len(text) >= 8:
                return datetime.strptime(text[:8], "%Y%m%d").date()
    except Exception:  # noqa: BLE001 - a hint only: anything odd means "not known"
        return None
    return None


def days_before_arrival(instances: list[tuple[Path, float]]) -> int | None:
    """Days between the most recent acquisition and its arrival, over (spool file, received
    at) pairs; None if any instance's date is unknown (then the study counts as new)."""
    ages = []
    for path, received_at in instances:
        acquired = acquired_on(path)
        if acquired is None:
            return None
        ages.append((datetime.fromtimestamp(received_at).date() - acquired).days)
    return min(ages) if ages else None
