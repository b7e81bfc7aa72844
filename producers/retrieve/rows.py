"""A cohort file: one patient and date window per row, each row validated on its own.

CSV with a header row. Columns (names case-insensitive; order free):

``nhs_number``   10 digits, modulus-11 check digit (spaces or hyphens allowed) } one of the two
``patient_id``   the trust's local patient ID (when there is no NHS number)    } per row
``date_from``    first study date, ``YYYY-MM-DD`` or ``YYYYMMDD``
``date_to``      last study date (inclusive), same forms, not before ``date_from``
``modalities``   optional: modality codes separated by ``;`` or spaces (default: the trust's)
``body_parts``   optional: body parts (BodyPartExamined terms) separated by ``;`` or spaces

A bad row is reported with the file, row (line) number and field, never with its value (an NHS
number in an error message is patient data in a log); the good rows stand on their own.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from consumers.deid.pseudonyms import Pseudonymiser, nhs_number_valid
from smartbox.errors import ConfigError

COLUMNS = ("nhs_number", "patient_id", "date_from", "date_to", "modalities", "body_parts")
MAX_ROWS = 1_000_000
_MODALITY_RE = re.compile(r"^[A-Z0-9]{1,16}$")
_BODY_PART_RE = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_SPLIT = re.compile(r"[;,\s]+")
# a DICOM LO value without backslash or control characters (C-FIND matching characters too)
_LOCAL_ID_RE = re.compile(r"^[^\\\x00-\x1f*?]{1,64}$")


@dataclass(frozen=True, repr=False)
class CohortRow:
    """One validated row. Holds identifiers: never logged (``repr`` shows only the row)."""

    row: int
    nhs_number: str | None
    patient_id: str | None
    date_from: date
    date_to: date
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"CohortRow(row={self.row})"

    def query(self, nhs_number_attribute: str = "PatientID") -> tuple[str, str]:
        """The attribute and value to ask the archive for (``query_key``)."""
        return query_key(nhs_number_attribute, self.nhs_number, self.patient_id)


def query_key(
    nhs_number_attribute: str, nhs_number: str | None, patient_id: str | None
) -> tuple[str, str]:
    """``(attribute keyword, value)`` a C-FIND matches a cohort patient on: the NHS number's
    digits in the trust's ``nhs_number_attribute`` (where its images hold it: PatientID, or
    e.g. OtherPatientIDs), else the local ID in PatientID."""
    if nhs_number:
        return nhs_number_attribute, nhs_number
    return "PatientID", patient_id or ""


def row_pseudonym(names: Pseudonymiser, nhs_number_attribute: str, row: CohortRow) -> str:
    """The patient pseudonym the de-identifier gives this row's images: from the NHS number;
    for a local ID, as ``consumers.withdraw_resolve`` does, the ID read as an NHS number too
    when the trust keeps NHS numbers in PatientID."""
    if row.nhs_number:
        return names.patient(row.nhs_number, None)[0]
    nhs = row.patient_id if nhs_number_attribute == "PatientID" else None
    return names.patient(nhs, row.patient_id)[0]


@dataclass
class RowError:
    """What is wrong with one row: file, row, field and why (no values)."""

    source: str
    row: int
    field: str
    why: str

    def __str__(self) -> str:
        return f"{self.source}: row {self.row}: field '{self.field}': {self.why}"


@dataclass
class Parsed:
    rows: list[CohortRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def _date(text: str) -> date | None:
    t = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
        t = t.replace("-", "")
    if not re.fullmatch(r"\d{8}", t):
        return None
    try:
        return date(int(t[:4]), int(t[4:6]), int(t[6:8]))
    except ValueError:
        return None


def _codes(text: str) -> list[str]:
    return [c for c in _SPLIT.split(text.strip().upper()) if c]


def validate_row(source: str, number: int, raw: dict[str, str]) -> CohortRow | list[RowError]:
    """One row as a CohortRow, or every problem it has."""
    errors: list[RowError] = []

    def bad(fld: str, why: str) -> None:
        errors.append(RowError(source, number, fld, why))

    nhs_raw = (raw.get("nhs_number") or "").strip()
    local_raw = (raw.get("patient_id") or "").strip()
    nhs = nhs_number_valid(nhs_raw) if nhs_raw else None
    if nhs_raw and nhs is None:
        bad("nhs_number", "not a valid NHS number (10 digits, modulus-11 check digit)")
    if local_raw and not _LOCAL_ID_RE.match(local_raw):
        bad("patient_id", "1-64 characters, no backslash, wildcard or control character")
    if not nhs_raw and not local_raw:
        bad("nhs_number", "give an NHS number or a patient_id")
    start = _date(raw.get("date_from") or "")
    end = _date(raw.get("date_to") or "")
    for fld, day in (("date_from", start), ("date_to", end)):
        if day is None:
            given = (raw.get(fld) or "").strip()
            invalid = "not a real date (YYYY-MM-DD or YYYYMMDD)"
            bad(fld, invalid if given else "required, a date YYYY-MM-DD")
    if start is not None and end is not None and end < start:
        bad("date_to", "before date_from")
    modalities = _codes(raw.get("modalities") or "")
    if not all(_MODALITY_RE.match(m) for m in modalities):
        bad("modalities", "modality codes (CT, MR, CR, DX, ...) separated by ';'")
    body_parts = _codes(raw.get("body_parts") or "")
    if not all(_BODY_PART_RE.match(b) for b in body_parts):
        bad("body_parts", "body part terms (CHEST, THORAX, ...) separated by ';'")
    if errors:
        return errors
    assert start is not None and end is not None
    return CohortRow(
        row=number,
        nhs_number=nhs,
        patient_id=None if nhs else local_raw,
        date_from=start,
        date_to=end,
        modalities=tuple(modalities),
        body_parts=tuple(body_parts),
    )


def parse_text(source: str, text: str) -> Parsed:
    """Every row of a cohort CSV, validated; ConfigError if the file itself is unusable
    (no header, unknown columns, neither identifier column, too many rows)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    if not header:
        raise ConfigError(f"{source}: empty: expected a header row ({', '.join(COLUMNS)})")
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise ConfigError(f"{source}: unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})")
    if "nhs_number" not in header and "patient_id" not in header:
        raise ConfigError(f"{source}: needs a nhs_number or patient_id column")
    for needed in ("date_from", "date_to"):
        if needed not in header:
            raise ConfigError(f"{source}: needs a {needed} column")
    reader.fieldnames = header
    parsed = Parsed()
    for raw in reader:
        number = reader.line_num  # the row's (last) line in the file; blank lines skipped
        if None in raw:  # more cells than the header has
            parsed.errors.append(RowError(source, number, "-", "more cells than header columns"))
            continue
        if not any((v or "").strip() for v in raw.values()):
            continue  # a blank line is not a row
        if len(parsed.rows) + len(parsed.errors) >= MAX_ROWS:
            raise ConfigError(f"{source}: more than {MAX_ROWS} rows: split the cohort")
        result = validate_row(source, number, {k: v or "" for k, v in raw.items()})
        if isinstance(result, CohortRow):
            parsed.rows.append(result)
        else:
            parsed.errors.extend(result)
    return parsed


def parse_file(path: Path) -> Parsed:
    """``parse_text`` of a file (UTF-8, a BOM allowed)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (save the CSV as UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse_text(str(path), text)
