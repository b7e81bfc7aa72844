"""When a study's instances were acquired, for the export's fairness (backfill or prospective).

The date is the Acquisition Date, else the Content, Series or Study Date
(``header.acquisition_date``). Intake reads it with the header it reads anyway (the dates come
before the study UID) and the ledger keeps only the days from it to the arrival. The relay
reads a spool file for it only where intake recorded none (a ledger from before, a file
adopted by recovery): the first 64 KiB, up to (0008,0023), by pydicom. Only a count of days
leaves the receiver (in the quarantine batch manifest: ``acquired_days_before_arrival``), never
the date itself; an instance whose date cannot be read (unreadable, no date) makes the study's
age unknown, which the exporter treats as prospective.
"""

from __future__ import annotations

import io
from datetime import date, datetime
from pathlib import Path

from pydicom.filereader import read_partial

from . import header

PREFIX = 64 * 1024
_LAST_DATE = 0x00080023  # Content Date: every date we look at comes before it


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
        return header.acquisition_date(str(ds.get(k) or "") for k in header.DATE_KEYWORDS)
    except Exception:  # noqa: BLE001 - a hint only: anything odd means "not known"
        return None


def days_before_arrival(instances: list[tuple[Path, float, int | None]]) -> int | None:
    """Days between the most recent acquisition and its arrival, over (spool file, received
    at, days as read at intake or None) triples; None if any instance's date is unknown (then
    the study counts as new). A file is read only for what intake did not record."""
    ages = []
    for path, received_at, days in instances:
        if days is None:
            acquired = acquired_on(path)
            if acquired is None:
                return None
            days = (datetime.fromtimestamp(received_at).date() - acquired).days
        ages.append(days)
    return min(ages) if ages else None
