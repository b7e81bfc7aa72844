"""Clinical submission files for tests: valid and invalid rows, identifiers planted."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from consumers.clinical.fields import csv_columns

#: synthetic NHS numbers with a valid check digit (and one without)
NHS_A = "9434765919"
NHS_B = "9434765870"
NHS_C = "4010232137"
NHS_BAD = "9434765918"

#: identifiers planted in every row: none may appear in a record, a message or a log
PLANTED_NAME = "Quentin Wigglesworth-Abernathy"
PLANTED_ADDRESS = "17 Zebedee Crescent, Little Snoring"
PLANTED_POSTCODE = "NR21 0ZZ"
PLANTED_DOB = "1950-03-14"
PLANTED_LOCAL = "MRN-CLIN-55501"
PLANTED_NOTES = "Lives with daughter Philippa Wigglesworth"
PLANTED_RECORD_KEY = "EPISODE-77123"


def planted(row: dict[str, Any]) -> list[str]:
    """The identifying values of a row, in the spellings a leak could take."""
    out = [str(row[k]) for k in ("name", "address", "postcode", "notes", "record_key") if k in row]
    if "nhs_number" in row:
        out.append(str(row["nhs_number"]).replace(" ", ""))
    if "local_patient_id" in row:
        out.append(str(row["local_patient_id"]))
    if "date_of_birth" in row:
        dob = str(row["date_of_birth"])
        out += [dob, dob.replace("-", "")]
    return out


def identified(nhs: str, **fields: Any) -> dict[str, Any]:
    """A row with every direct identifier filled in."""
    row: dict[str, Any] = {
        "nhs_number": nhs,
        "local_patient_id": PLANTED_LOCAL + nhs[-3:],
        "name": f"{PLANTED_NAME} {nhs[-2:]}",
        "address": PLANTED_ADDRESS,
        "postcode": PLANTED_POSTCODE,
        "date_of_birth": PLANTED_DOB,
        "notes": PLANTED_NOTES,
        "sex": "female",
        "ethnicity": "A",
        "swab_1_date": "2020-04-02",
        "swab_1_result": "Positive",
        "admission_date": "2020-04-01",
        "outcome": "discharged",
        "discharge_date": "2020-04-20",
        "comorbidities": "hypertension; diabetes",
    }
    row.update(fields)
    return {k: v for k, v in row.items() if v is not None}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as a CSV file whose header has every column any row uses (in schema order)."""
    used = {k for r in rows for k in r}
    columns = [c for c in csv_columns() if c in used]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def write_json(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path
