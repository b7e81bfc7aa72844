"""Reading a clinical submission file into rows of the ``clinical.submission`` v1 shape.

CSV (UTF-8, a header row; the row numbers are a spreadsheet's: the header is row 1) or JSON
(a list of objects, or ``{"records": [...]}``; rows count from 1). A problem with the file
as a whole (unreadable, not CSV or JSON, a column or key the schema does not know, so that
a misspelt ``swab_1_reslt`` is never silently ignored) is an operator's mistake: a
ConfigError naming the file and the column, never a value. A problem with one row is that
row's (``validate``).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smartbox.errors import ConfigError

from .fields import MAX_SWABS, csv_columns, properties

#: a file larger than this is not a clinical extract (and would sit in memory)
MAX_FILE_BYTES = 256 * 1024 * 1024
_SWAB = re.compile(r"^swab_(\d+)_(date|result)$")
_LIST_SPLIT = re.compile(r"[;,]")


@dataclass(frozen=True)
class Row:
    """One row as submitted: its number and fields (identifying: never logged)."""

    number: int
    fields: dict[str, Any]

    def __repr__(self) -> str:
        return f"Row({self.number}, <identifying>)"


def read_rows(path: Path) -> list[Row]:
    """Every row of a CSV or JSON submission (ConfigError for a file-level problem)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix == ".json" or (suffix != ".csv" and text.lstrip()[:1] in ("[", "{")):
        return _json_rows(path, text)
    return _csv_rows(path, text)


def _csv_rows(path: Path, text: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ConfigError(f"{path}: empty: a header row is needed") from None
    except csv.Error:
        raise ConfigError(f"{path}: not a CSV file") from None
    columns = [h.strip().lower() for h in header]
    known = set(csv_columns())
    for n, name in enumerate(columns, 1):
        if name not in known:
            raise ConfigError(
                f"{path}: column {n} of the header is not a clinical field{_hint(name)}"
            )
    if len(set(columns)) != len(columns):
        raise ConfigError(f"{path}: a column appears twice in the header")
    rows = []
    try:
        for index, cells in enumerate(reader):
            if not any(c.strip() for c in cells):
                continue  # a blank line is not a row
            fields: dict[str, Any] = {
                c: v.strip() for c, v in zip(columns, cells, strict=False) if v.strip()
            }
            if len(cells) > len(columns):
                fields["_extra_cells"] = True
            rows.append(Row(index + 2, _gather(fields)))
    except csv.Error:
        raise ConfigError(f"{path}: not a CSV file (row {reader.line_num})") from None
    return rows


def _gather(cells: dict[str, Any]) -> dict[str, Any]:
    """CSV cells in the schema's shape: swab columns into ``swabs``, lists split, age an int."""
    out: dict[str, Any] = {}
    swabs: dict[int, dict[str, str]] = {}
    for name, value in cells.items():
        m = _SWAB.match(name)
        if m:
            swabs.setdefault(int(m[1]), {})[m[2]] = value
        elif name == "comorbidities":
            out[name] = [v.strip().lower() for v in _LIST_SPLIT.split(value) if v.strip()]
        elif name == "age":
            out[name] = int(value) if value.isdigit() and value.isascii() else value
        else:
            out[name] = value
    if swabs:
        # swab N is the Nth column pair: a gap (swab 1 empty, swab 2 given) keeps its place,
        # so an error names the column the trust's extract has
        last = max(swabs)
        out["swabs"] = [swabs.get(n, {}) for n in range(1, min(last, MAX_SWABS + 1) + 1)]
    return out


def _json_rows(path: Path, text: str) -> list[Row]:
    try:
        doc = json.loads(text)
    except ValueError:
        raise ConfigError(f"{path}: not a JSON document") from None
    if isinstance(doc, dict) and set(doc) == {"records"}:
        doc = doc["records"]
    if not isinstance(doc, list):
        raise ConfigError(f'{path}: a JSON list of records (or {{"records": [...]}}) expected')
    known = set(properties())
    rows = []
    for n, item in enumerate(doc, 1):
        if not isinstance(item, dict):
            rows.append(Row(n, {"_not_an_object": True}))
            continue
        for name in item:
            if name not in known:
                raise ConfigError(
                    f"{path}: record {n}: a key is not a clinical field{_hint(str(name))}"
                )
        fields = dict(item)
        if isinstance(fields.get("comorbidities"), list):
            fields["comorbidities"] = [
                v.strip().lower() if isinstance(v, str) else v for v in fields["comorbidities"]
            ]
        rows.append(Row(n, fields))
    return rows


def _hint(name: str) -> str:
    """The known field an unknown name is close to. The name itself is never echoed: a header
    row may turn out to be a patient's data (a file exported without one)."""
    close = difflib.get_close_matches(name, csv_columns(), n=1, cutoff=0.75)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return " (docs/clinical.md lists them)"
