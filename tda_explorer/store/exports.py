"""Exports of kept / removed training examples as CSV, JSON and Parquet, and reading them back.

An export table has one row per training example with the columns
`id, label, class_name, score, flagged, suggested_label, note, status` where `status` is "kept" or
"removed". Files are written atomically into `<workspace>/exports/`.
"""

from __future__ import annotations

import io
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
            "id": list(ids),
            "label": labels,
            "class_name": [class_names[i] for i in labels],
            "score": np.asarray(scores, dtype=np.float64),
            "flagged": [bool(flags.get(i) and flags[i].flagged) for i in ids],
            "suggested_label": [flags[i].suggested_label if i in flags else None for i in ids],
            "note": [flags[i].note if i in flags else "" for i in ids],
            "status": np.where(np.asarray(removed, dtype=bool), "removed", "kept"),
        },
        columns=COLUMNS,
    )


def export_bytes(table: pd.DataFrame, fmt: str) -> bytes:
    """The table serialised as `fmt` ("csv", "json" records, or "parquet")."""
    if fmt == "csv":
        return table.to_csv(index=False).encode("utf-8")
    if fmt == "json":
        return table.to_json(orient="records", indent=1).encode("utf-8")
    if fmt == "parquet":
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        return buf.getvalue()
    raise DataError(f"export format {fmt!r} is not one of {EXPORT_FORMATS}.")


def write_exports(directory: Path, name: str, table: pd.DataFrame) -> dict[str, Path]:
    """Write `<name>.csv/.json/.parquet` (and `<name>-kept.*`, `<name>-removed.*` CSV lists) atomically."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "export"
    out = {}
    for fmt in EXPORT_FORMATS:
        out[fmt] = atomic_write_bytes(Path(directory) / f"{safe}.{fmt}", export_bytes(table, fmt))
    for status in ("kept", "removed"):
        part = table[table["status"] == status]
        out[f"{status}_csv"] = atomic_write_bytes(
            Path(directory) / f"{safe}-{status}.csv", export_bytes(part, "csv")
        )
    return out


def read_export(path: str | Path) -> pd.DataFrame:
    """Read an export back (CSV, JSON or Parquet by extension); DataError if it is not an export table."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    try:
        if suffix == "csv":
            table = pd.read_csv(path, dtype={"id": str, "suggested_label": str}, keep_default_na=False)
        elif suffix == "json":
            table = pd.read_json(path, orient="records", dtype={"id": str})
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


def kept_ids(path: str | Path) -> list[str]:
    """Ids whose status is "kept" in an export file, in file order."""
    table = read_export(path)
    return table.loc[table["status"] == "kept", "id"].tolist()
