"""For cohorts from clinical data (issue 12, item 4): who has a swab result, and when.

``swab_patients`` reads a clinical submission with the very reader and checks the submit
command uses, and returns, for each valid row with a swab result, the patient's NHS number
or local patient ID and the (real, unshifted) swab dates: what a cohort needs to query the
trust's archive for chest imaging in a window around each swab. Identifying: for use inside
the box only (a cohort's state must keep only pseudonyms); ``repr`` shows nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from .rows import read_rows
from .validate import ValidRow, check_row


@dataclass(frozen=True, repr=False)
class SwabPatient:
    """One valid clinical row's patient and swab dates (identifying)."""

    row: int
    nhs_number: str | None
    local_patient_id: str | None
    swab_dates: tuple[date, ...]

    @property
    def first_swab(self) -> date:
        return self.swab_dates[0]

    def __repr__(self) -> str:
        return f"SwabPatient(row {self.row}, <identifying>)"


def swab_patients(path: Path, today: date | None = None) -> list[SwabPatient]:
    """Every valid row of ``path`` (each has at least one swab result), in file order.
    ConfigError for a problem with the file; invalid rows are left out (``smartbox clinical
    submit`` reports them)."""
    out = []
    for row in read_rows(path):
        checked = check_row(row, today)
        if isinstance(checked, ValidRow) and checked.swabs:
            out.append(
                SwabPatient(
                    row=checked.number,
                    nhs_number=checked.nhs_number,
                    local_patient_id=checked.local_patient_id,
                    swab_dates=tuple(sorted(d for d, _result in checked.swabs)),
                )
            )
    return out
