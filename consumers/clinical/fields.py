"""The clinical fields and their vocabularies, read from the one schema that defines them.

``schemas/clinical.submission.v1.schema.json`` owns the field names and every closed list
(swab results, sex, ethnic category, outcome, comorbidities); the held-back reasons are the
enumeration of ``clinical.submitted`` v1. Nothing here repeats a list: a value the schema
does not name is unknown to the submit command too.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import schemas

#: at most this many swabs per record (CSV columns swab_1_* .. swab_10_*)
MAX_SWABS = 10
#: the direct identifiers a row may carry: used in the box (pseudonym, record id, age), or
#: dropped; never in a record, a message, a log line or an error
IDENTIFIERS = (
    "nhs_number",
    "local_patient_id",
    "record_key",
    "name",
    "address",
    "postcode",
    "date_of_birth",
    "notes",
)
#: event dates of a record, in the order they can happen (checked: none before an earlier one)
EVENT_DATES = ("admission_date", "itu_admission_date", "discharge_date", "date_of_death")
#: spellings a trust's system may use, mapped to the schema's codes (case-insensitive)
SEX_WORDS = {"f": "F", "female": "F", "m": "M", "male": "M", "u": "U", "unknown": "U"}
#: what a record's age is capped at ("90 or over"): ages above it single people out
AGE_CAP = 90


@cache
def submission_schema() -> dict[str, Any]:
    return schemas.load("clinical.submission", 1)


def properties() -> dict[str, Any]:
    props: dict[str, Any] = submission_schema()["properties"]
    return props


def vocabulary(field: str) -> tuple[str, ...]:
    """The closed list of a field (``swab_result``, ``sex``, ``ethnicity``, ``outcome``,
    ``comorbidities``)."""
    props = properties()
    if field == "swab_result":
        return tuple(props["swabs"]["items"]["properties"]["result"]["enum"])
    if field == "comorbidities":
        return tuple(props["comorbidities"]["items"]["enum"])
    return tuple(props[field]["enum"])


@cache
def reasons() -> tuple[str, ...]:
    """Why a row is held back: the closed list of ``clinical.submitted`` v1."""
    return tuple(schemas.load("clinical.submitted", 1)["$defs"]["reason"]["enum"])


def reason(code: str) -> str:
    """``code`` checked against the closed list where it is made (ValueError if not in it)."""
    if code not in reasons():
        raise ValueError(f"not a clinical held-back reason: {code}")
    return code


@cache
def csv_columns() -> tuple[str, ...]:
    """Every column a CSV file may have: the schema's scalar fields, ``comorbidities`` (values
    separated by ';' or ','), and ``swab_N_date`` / ``swab_N_result`` for N = 1..10."""
    scalar = [name for name in properties() if name != "swabs"]
    swabs = [f"swab_{n}_{part}" for n in range(1, MAX_SWABS + 1) for part in ("date", "result")]
    return tuple(scalar + swabs)


def column_of(path: list[str | int]) -> str:
    """The input field a schema path points at, spelt as a CSV column (``swabs/1/result`` ->
    ``swab_2_result``): the same name for CSV and JSON files, so one report reads the same."""
    if not path:
        return "row"
    if path[0] == "swabs" and len(path) >= 2 and isinstance(path[1], int):
        part = str(path[2]) if len(path) >= 3 else "date"
        return f"swab_{path[1] + 1}_{part}"
    return str(path[0])
