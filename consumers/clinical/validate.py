"""Validating one submitted row: the schema, then what a schema cannot say.

Every problem of a row is reported (field and reason, from the closed list of
``clinical.submitted`` v1), not only the first, so a trust fixes its extract in one go. A
problem names the field as a CSV column (``swab_2_result``) and never quotes the value: the
value may be the patient's data. Checks beyond the schema: the NHS number's modulus-11 check
digit (as the de-identifier checks it), real calendar days (``2021-02-30`` is not one), not
in the future nor before 1900, and events in a possible order (born before anything; an ITU
admission, a discharge or a death not before the admission).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from consumers.deid.pseudonyms import nhs_number_valid
from schemas import validator

from . import fields as F
from .rows import Row

_SCHEMA_REASONS = {
    "required": "required",
    "minItems": "required",
    "enum": "value_unknown",
    "type": "invalid_type",
    "minimum": "out_of_range",
    "maximum": "out_of_range",
    "maxItems": "too_many",
    "uniqueItems": "duplicate_value",
    "anyOf": "patient_missing",
}
_EARLIEST = date(1900, 1, 1)


@dataclass(frozen=True)
class Problem:
    """Why a row is held back: a field (as a CSV column) and a reason code."""

    field: str
    reason: str

    def __post_init__(self) -> None:
        F.reason(self.reason)  # the closed list, checked where a reason is made


@dataclass(frozen=True, repr=False)
class ValidRow:
    """A row that passed every check, its values parsed (identifying: never logged)."""

    number: int
    nhs_number: str | None
    local_patient_id: str | None
    record_key: str | None
    date_of_birth: date | None
    swabs: tuple[tuple[date, str], ...]
    dates: dict[str, date] = field(default_factory=dict)
    age: int | None = None
    sex: str | None = None
    ethnicity: str | None = None
    outcome: str | None = None
    comorbidities: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"ValidRow({self.number}, <identifying>)"


def parse_date(value: Any) -> date | str:
    """A date from ``YYYY-MM-DD``, ``YYYYMMDD`` or ``DD/MM/YYYY``; else the reason code."""
    if not isinstance(value, str):
        return "invalid_type"
    text = value.strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%d/%m/%Y"):
        try:
            parsed = datetime.strptime(text, fmt).date()
        except ValueError:
            continue
        if len(text) not in (8, 10):
            break  # strptime accepts 2021-1-5: a date field is written in full
        return parsed
    return "date_invalid"


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Case and spelling of the coded fields, as the schema spells them."""
    out = dict(raw)
    sex = out.get("sex")
    if isinstance(sex, str):
        out["sex"] = F.SEX_WORDS.get(sex.strip().lower(), sex)
    for name in ("outcome",):
        if isinstance(out.get(name), str):
            out[name] = out[name].strip().lower()
    if isinstance(out.get("ethnicity"), str):
        out["ethnicity"] = out["ethnicity"].strip().upper()
    swabs = out.get("swabs")
    if isinstance(swabs, list):
        out["swabs"] = [
            {**s, "result": s["result"].strip().lower()}
            if isinstance(s, dict) and isinstance(s.get("result"), str)
            else s
            for s in swabs
        ]
    return out


def _schema_problems(row: dict[str, Any]) -> list[Problem]:
    problems = []
    for error in validator("clinical.submission", 1).iter_errors(row):
        path = list(error.absolute_path)
        where = F.column_of(path)
        if error.validator == "required" and isinstance(error.validator_value, list):
            missing = [k for k in error.validator_value if k not in (error.instance or {})]
            if path[:1] == ["swabs"] and len(path) == 2:
                problems.append(Problem(where, "swab_incomplete"))
                continue
            if missing == ["swabs"]:
                where = "swab_1_date"
            elif missing:
                where = F.column_of([*path, missing[0]])
        reason = _SCHEMA_REASONS.get(str(error.validator), "invalid_format")
        if error.validator == "anyOf":
            where = "nhs_number"
        problems.append(Problem(where, reason))
    return problems


def _date_problems(
    row: dict[str, Any], today: date
) -> tuple[list[Problem], dict[str, date], list[tuple[date, str]], date | None]:
    problems: list[Problem] = []
    parsed: dict[str, date] = {}
    named = [(n, row[n]) for n in ("date_of_birth", *F.EVENT_DATES) if n in row]
    swabs: list[Any] = row["swabs"] if isinstance(row.get("swabs"), list) else []
    for i, swab in enumerate(swabs):
        if isinstance(swab, dict) and "date" in swab:
            named.append((f"swab_{i + 1}_date", swab["date"]))
    for name, value in named:
        day = parse_date(value)
        if isinstance(day, str):
            if day == "date_invalid":  # the schema already said "invalid_type"
                problems.append(Problem(name, day))
        elif day < _EARLIEST:
            problems.append(Problem(name, "date_out_of_range"))
        elif day > today:
            problems.append(Problem(name, "date_in_future"))
        else:
            parsed[name] = day
    birth = parsed.pop("date_of_birth", None)
    swab_days = [
        (parsed.pop(f"swab_{i + 1}_date"), s.get("result", ""))
        for i, s in enumerate(swabs)
        if f"swab_{i + 1}_date" in parsed
    ]
    if birth is not None:
        for name, day in [
            *parsed.items(),
            *((f"swab_{i + 1}_date", d) for i, (d, _r) in enumerate(swab_days)),
        ]:
            if day < birth:
                problems.append(Problem(name, "date_order"))
    admitted = parsed.get("admission_date")
    if admitted is not None:
        for name in F.EVENT_DATES[1:]:
            if name in parsed and parsed[name] < admitted:
                problems.append(Problem(name, "date_order"))
    return problems, parsed, swab_days, birth


def check_row(row: Row, today: date | None = None) -> ValidRow | list[Problem]:
    """The row's values, parsed, or every problem it has (sorted, each once)."""
    today = today or date.today()
    if row.fields.get("_not_an_object"):
        return [Problem("row", "invalid_type")]
    raw = {k: v for k, v in row.fields.items() if not k.startswith("_")}
    problems: list[Problem] = []
    if row.fields.get("_extra_cells"):
        problems.append(Problem("row", "invalid_format"))
    values = _normalise(raw)
    problems += _schema_problems(values)
    nhs = values.get("nhs_number")
    digits = nhs_number_valid(nhs) if isinstance(nhs, str) else None
    if isinstance(nhs, str) and digits is None:
        problems.append(Problem("nhs_number", "nhs_number_checksum"))
    date_problems, dates, swabs, birth = _date_problems(values, today)
    problems += date_problems
    if problems:
        return sorted(set(problems), key=lambda p: (p.field, p.reason))
    age = values.get("age")
    if birth is not None:
        index = min([d for d, _r in swabs] + [dates[k] for k in ("admission_date",) if k in dates])
        age = index.year - birth.year - ((index.month, index.day) < (birth.month, birth.day))
    local = values.get("local_patient_id")
    return ValidRow(
        number=row.number,
        nhs_number=digits,
        local_patient_id=local.strip() if isinstance(local, str) else None,
        record_key=values.get("record_key"),
        date_of_birth=birth,
        swabs=tuple(swabs),
        dates=dates,
        age=age,
        sex=values.get("sex"),
        ethnicity=values.get("ethnicity"),
        outcome=values.get("outcome"),
        comorbidities=tuple(sorted(values.get("comorbidities", []))),
    )
