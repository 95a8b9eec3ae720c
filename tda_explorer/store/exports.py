"""Exports of kept / removed training examples as CSV, JSON and Parquet, and reading them back.

An export table has one row per training example with the columns
`id, label, class_name, score, flagged, suggested_label, note, status` where `status` is "kept" or
"removed", `label` is the class index and the text columns (`id`, `class_name`, `suggested_label`,
`note`) are strings. Files are written atomically into `<workspace>/exports/`.

Exactness: every format reads back to the same values. JSON is written with Python's `json` (floats
with `repr` precision, so a float32 or float64 score round-trips bit for bit; NaN as null) and read back
without type guessing (`"007"` stays the string `"007"`).

Spreadsheet safety: by default (`neutralize_formulas=True`) a CSV text cell that starts with `=`, `+`,
`-`, `@`, a tab or a carriage return — which Excel/LibreOffice would run as a formula — is written with
a leading `'`; so is one that starts with `'`, which keeps the rule reversible. `read_export` /
`kept_ids` remove that one `'` again. JSON and Parquet are never altered.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from tda_explorer.errors import DataError
from tda_explorer.store.atomic import atomic_write_bytes
from tda_explorer.store.flags import FlagRecord

EXPORT_FORMATS = ("csv", "json", "parquet")
COLUMNS = ["id", "label", "class_name", "score", "flagged", "suggested_label", "note", "status"]
TEXT_COLUMNS = ("id", "class_name", "suggested_label", "note")
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet treat a CSV cell as a formula."""
_ESCAPE = "'"


def export_table(
    ids: tuple[str, ...] | list[str],
    labels: np.ndarray,
    class_names: tuple[str, ...] | list[str],
    scores: np.ndarray,
    removed: np.ndarray,
    flags: Mapping[str, FlagRecord] | None = None,
) -> pd.DataFrame:
    """The export table (see module docstring); `scores` and `removed` are `[n_train]`."""
    flags = flags or {}
    labels = np.asarray(labels).astype(int)
    return pd.DataFrame(
        {
            "id": [str(i) for i in ids],
            "label": labels,
            "class_name": [str(class_names[i]) for i in labels],
            "score": np.asarray(scores, dtype=np.float64),
            "flagged": [bool(flags.get(i) and flags[i].flagged) for i in ids],
            "suggested_label": [flags[i].suggested_label if i in flags else None for i in ids],
            "note": [flags[i].note if i in flags else "" for i in ids],
            "status": np.where(np.asarray(removed, dtype=bool), "removed", "kept"),
        },
        columns=COLUMNS,
    )


def export_bytes(table: pd.DataFrame, fmt: str, *, neutralize_formulas: bool = True) -> bytes:
    """The table serialised as `fmt` ("csv", "json" records, or "parquet").

    Args:
        table: An export table (see `export_table`).
        fmt: One of `EXPORT_FORMATS`.
        neutralize_formulas: CSV only: prefix text cells starting with `= + - @`, tab, CR or `'` with a
            `'` so spreadsheets show them as text instead of running them (on by default; see module
            docstring). `read_export` undoes it.

    Raises:
        DataError: Unknown format.
    """
    if fmt == "csv":
        out = table.copy()
        if neutralize_formulas:
            for col in TEXT_COLUMNS:
                if col in out.columns:
                    out[col] = out[col].map(neutralize_formula)
        # CRLF rows (RFC 4180) make the csv writer quote a lone CR inside a cell, which would split the row
        return out.to_csv(index=False, lineterminator="\r\n").encode("utf-8")
    if fmt == "json":
        records = [{k: _json_value(v) for k, v in row.items()} for row in table.to_dict(orient="records")]
        return (json.dumps(records, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    if fmt == "parquet":
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        return buf.getvalue()
    raise DataError(f"export format {fmt!r} is not one of {EXPORT_FORMATS}.")


def neutralize_formula(value: object) -> object:
    """`value` with a leading `'` if it is a string a spreadsheet would run as a formula (or starts with `'`)."""
    if isinstance(value, str) and value and (value[0] in FORMULA_TRIGGERS or value[0] == _ESCAPE):
        return _ESCAPE + value
    return value


def restore_formula(value: object) -> object:
    """Undo `neutralize_formula`: drop one leading `'`."""
    if isinstance(value, str) and value.startswith(_ESCAPE):
        return value[1:]
    return value


def _json_value(value: object) -> object:
    """A plain JSON value: numpy scalars unwrapped, NaN/Inf as None (floats keep `repr` precision)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_exports(
    directory: Path, name: str, table: pd.DataFrame, *, neutralize_formulas: bool = True
) -> dict[str, Path]:
    """Write `<name>.csv/.json/.parquet` (and `<name>-kept.*`, `<name>-removed.*` CSV lists) atomically.

    `neutralize_formulas` applies to the CSV files (see `export_bytes`).
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "export"
    out = {}
    for fmt in EXPORT_FORMATS:
        data = export_bytes(table, fmt, neutralize_formulas=neutralize_formulas)
        out[fmt] = atomic_write_bytes(Path(directory) / f"{safe}.{fmt}", data)
    for status in ("kept", "removed"):
        part = table[table["status"] == status]
        out[f"{status}_csv"] = atomic_write_bytes(
            Path(directory) / f"{safe}-{status}.csv",
            export_bytes(part, "csv", neutralize_formulas=neutralize_formulas),
        )
    return out


def read_export(path: str | Path, *, neutralized_formulas: bool = True) -> pd.DataFrame:
    """Read an export back (CSV, JSON or Parquet by extension) with the values that were exported.

    Text columns come back as strings (`"007"` stays `"007"`); JSON scores are the exported floats
    exactly.

    Args:
        path: The file.
        neutralized_formulas: CSV only: the file was written with `neutralize_formulas=True` (the
            default), so one leading `'` is removed from text cells.

    Raises:
        DataError: Unreadable, unknown format, or not an export table.
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    try:
        if suffix == "csv":
            text = {c: str for c in TEXT_COLUMNS}
            table = pd.read_csv(path, dtype={**text, "status": str}, keep_default_na=False)
            if neutralized_formulas:
                for col in TEXT_COLUMNS:
                    if col in table.columns:
                        table[col] = table[col].map(restore_formula)
        elif suffix == "json":
            records = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise ValueError("expected a JSON list of records")
            table = pd.DataFrame.from_records(records, columns=list(records[0]) if records else COLUMNS)
        elif suffix in ("parquet", "pq"):
            table = pd.read_parquet(path)
        else:
            raise DataError(f"{path.name}: unknown export format {suffix!r}; use .csv, .json or .parquet.")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the export ({e}).") from e
    missing = [c for c in ("id", "status") if c not in table.columns]
    if missing:
        raise DataError(f"{path.name}: not an export table, missing column(s) {missing}.")
    table["id"] = table["id"].astype(str)
    return table


def kept_ids(path: str | Path, *, neutralized_formulas: bool = True) -> list[str]:
    """Ids whose status is "kept" in an export file, in file order (see `read_export`)."""
    table = read_export(path, neutralized_formulas=neutralized_formulas)
    return table.loc[table["status"] == "kept", "id"].tolist()
