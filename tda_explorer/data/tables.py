"""Reading the user's tables: every CSV / TSV cell as text, Parquet columns by their declared type.

What the user wrote is what we keep; conversions happen later, deliberately, per role:

- CSV / TSV are read with every column as text (`dtype=str`) and no missing-value guessing: a
  cell is exactly the characters between the separators (UTF-8, a byte-order mark is accepted).
  Only an empty cell is empty; `NA`, `null`, `None`, `NaN`, `n/a` are ordinary words. TSV is read
  without quote handling (tabs separate fields, quotes are text), CSV with standard quoting; a
  `.txt` file is read as TSV.
- The header (first line) names the columns; a duplicated name is refused (naming it), an empty
  name becomes `Unnamed: <position>` (as pandas names it). With `header=False` the file has no
  header line: columns are named by position, `"0"`, `"1"`, ..., or by `column_names`.
- Parquet columns are typed. Text (`string`), UTF-8 `binary` (decoded; other bytes are refused
  naming the column and row), dictionary-encoded values (decoded), integers, floats, decimals,
  booleans and all-null columns are accepted; list / struct / map / timestamp / date / time /
  duration / other columns are refused, naming the column, when a loader uses them. pandas'
  unnamed index (`__index_level_0__`) is dropped; a named index is an ordinary column.
- As text (ids, labels, texts, split values), typed Parquet values read: integers as their
  digits, integral floats as integers (`1.0` -> `"1"`), other floats by their shortest repr,
  decimals as written (`1.50`), booleans `True` / `False`, nulls as empty.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tda_explorer.data._common import decimal_number, map_labels, missing_column_message, split_by_fractions
from tda_explorer.errors import ConfigError, DataError

TABLE_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
"""Extension -> reader; `.txt` is read as tab-separated (the classic `label<TAB>text` corpus format)."""
NUMERIC_TYPES: tuple[str, ...] = ("int", "float", "decimal", "bool", "null")
"""Parquet column types read as numbers (`Table.types` values)."""


def where(file: Path) -> str:
    """How a message names a file: its absolute path, in parentheses."""
    return f"(file: {file.resolve()})"


def existing(path: str | Path, folder: bool = False) -> Path:
    """`path` as a Path if it exists and is a file (or a folder when `folder`), else DataError."""
    p = Path(path).expanduser()
    name = p.resolve().name or str(p)
    if not p.exists():
        raise DataError(f"{name}: path does not exist: {p.resolve()}. Check the spelling and the folder.")
    if folder and not p.is_dir():
        raise DataError(f"{name}: expected a folder with one sub-folder per class, got a file. {where(p)}")
    if not folder and p.is_dir():
        raise DataError(f"{name}: expected a file, got a folder. {where(p)}")
    return p


@dataclass
class Table:
    """A table as read from a user file.

    Attributes:
        file: the file.
        df: the cells; CSV / TSV: every column `str`; Parquet: Python values (str / int / float /
            Decimal / bool / bytes / None) in object columns.
        types: column -> "text" (CSV / TSV / Parquet strings), "binary", "int", "float", "decimal",
            "bool", "null", or "unsupported:<arrow type>".
        first_line: the line number of data row 0 in a CSV / TSV file (2 with a header, else 1);
            0 for Parquet (messages then give only the row).
        unnamed: columns whose header cell was empty (named `Unnamed: <position>`), e.g. the index
            pandas' `to_csv` writes; loaders leave them out of default feature sets.
    """

    file: Path
    df: pd.DataFrame
    types: dict[str, str]
    first_line: int
    unnamed: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        return list(self.df.columns)

    def __len__(self) -> int:
        return len(self.df)

    def where(self) -> str:
        return where(self.file)

    def row(self, i: int) -> str:
        """How a message names data row `i` (0-based), plus the line number in text files."""
        return f"row {i} (line {i + self.first_line})" if self.first_line else f"row {i}"

    def require(self, column: object, role: str) -> str:
        """`column` if the table has it, else DataError suggesting the closest column name.

        A name that is not a string (e.g. the int 123 for a column headed "123") is a ConfigError.
        """
        if not isinstance(column, str):
            raise ConfigError(
                f"{role} must be a column name (a string), got the {type(column).__name__} {column!r}; "
                f"pass {str(column)!r}."
            )
        if column not in self.df.columns:
            raise DataError(missing_column_message(self.file, str(column), role, self.columns))
        return column

    def refuse_type(self, column: str, role: str, use: str) -> None:
        """DataError if `column` holds a Parquet type no loader accepts (list, struct, timestamp, ...)."""
        kind = self.types[column]
        if kind.startswith("unsupported:"):
            raise DataError(
                f"{self.file.name}: {role} {column!r} holds {kind.split(':', 1)[1]} values, which cannot be "
                f"used as {use}; convert the column to {'numbers' if role.startswith('feature') else 'strings'} "
                f"or leave it out. {self.where()}"
            )

    def texts(self, column: str, role: str) -> list[str]:
        """Every cell of `column` as text (see the module docstring); "" for a missing cell."""
        self.refuse_type(column, role, "text")
        kind = self.types[column]
        values = self.df[column].tolist()
        if kind == "text":
            return ["" if v is None else v for v in values]
        if kind == "binary":
            out = []
            for i, v in enumerate(values):
                try:
                    out.append("" if v is None else bytes(v).decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{self.file.name}: {role} {column!r} holds bytes that are not UTF-8 text at "
                        f"{self.row(i)} ({bytes(v)[:20]!r}); store the column as UTF-8 strings. {self.where()}"
                    ) from e
            return out
        return [_as_text(v) for v in values]

    def numbers(self, column: str) -> np.ndarray:
        """A typed numeric Parquet column as `float64 [n]` (NaN for nulls, 1 / 0 for booleans)."""
        values = [np.nan if v is None else float(v) for v in self.df[column].tolist()]
        return np.asarray(values, dtype=np.float64)


def _as_text(v: object) -> str:
    """A typed Parquet value as text (module docstring rule)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _arrow_kind(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view":
        return "text"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "binary"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_decimal(t):
        return "decimal"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_null(t):
        return "null"
    return f"unsupported:{t}"


def _read_parquet(file: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    table = pq.read_table(file)
    unnamed_index = [n for n in table.column_names if re.fullmatch(r"__index_level_\d+__", str(n))]
    if unnamed_index:  # pandas' unnamed index (to_parquet with index=True): not data, as read_parquet does
        table = table.drop_columns(unnamed_index)
    names = [str(n) for n in table.column_names]
    _refuse_duplicates(file, names)
    columns, types = {}, {}
    for name, col in zip(names, table.columns, strict=True):
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        types[name] = _arrow_kind(col.type)
        values = col.to_pylist() if not types[name].startswith("unsupported:") else [None] * len(col)
        columns[name] = pd.Series(values, dtype=object)
    return pd.DataFrame(columns, index=range(table.num_rows)), types


def _refuse_duplicates(file: Path, names: list[str]) -> None:
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        listed = ", ".join(repr(n) for n in dups)
        raise DataError(
            f"{file.name}: the header names the column(s) {listed} more than once; column names must be "
            f"unique (rename or drop the duplicates). {where(file)}"
        )


def _read_delimited(
    file: Path, fmt: str, header: bool, column_names: list[str] | None
) -> tuple[pd.DataFrame, int]:
    sep, quoting = ("\t", csv.QUOTE_NONE) if fmt == "tsv" else (",", csv.QUOTE_MINIMAL)
    raw = pd.read_csv(
        file, sep=sep, quoting=quoting, encoding="utf-8-sig", header=None, dtype=str, na_filter=False
    )
    if header:
        header_cells = [str(v) for v in raw.iloc[0].tolist()]
        names = [v if v else f"Unnamed: {j}" for j, v in enumerate(header_cells)]
        raw = raw.iloc[1:].reset_index(drop=True)
        raw.attrs["unnamed"] = tuple(n for n, v in zip(names, header_cells, strict=True) if not v)
    elif column_names is not None:
        if len(column_names) != raw.shape[1]:
            raise DataError(
                f"{file.name}: column_names gives {len(column_names)} name(s) but the file has "
                f"{raw.shape[1]} column(s); give one name per column. {where(file)}"
            )
        names = list(column_names)
    else:
        names = [str(j) for j in range(raw.shape[1])]
    _refuse_duplicates(file, names)
    raw.columns = names
    return raw, 2 if header else 1


def read_user_table(
    path: str | Path,
    formats: tuple[str, ...] = ("csv", "tsv", "parquet"),
    header: bool = True,
    column_names: list[str] | tuple[str, ...] | None = None,
) -> Table:
    """Read a CSV / TSV / Parquet file (chosen by extension) as a `Table` with >= 1 row.

    Args:
        path: the file.
        formats: the accepted formats ("csv", "tsv", "parquet").
        header: whether the first line of a CSV / TSV file names the columns; when False,
            columns are named `column_names`, or by position "0", "1", ... (ignored for Parquet).
        column_names: names for a headerless CSV / TSV file, one per column.

    Raises:
        DataError: missing path, unsupported extension, empty file, not UTF-8, malformed content,
            duplicated column names.
        ConfigError: `header` / `column_names` of the wrong type.
    """
    if not isinstance(header, bool):
        raise ConfigError(f"header must be true or false, got {header!r}.")
    if column_names is not None:
        ok = isinstance(column_names, (list, tuple)) and all(isinstance(c, str) for c in column_names)
        if not ok:
            raise ConfigError(f"column_names must be a list of strings, got {column_names!r}.")
        if header:
            raise ConfigError(
                "column_names names the columns of a file without a header: also pass header=False."
            )
    file = existing(path)
    fmt = TABLE_FORMATS.get(file.suffix.lower())
    if fmt is None or fmt not in formats:
        allowed = ", ".join(e for e, f in TABLE_FORMATS.items() if f in formats)
        raise DataError(
            f"{file.name}: unsupported file extension {file.suffix or '(none)'!r}; use one of {allowed}. "
            f"{where(file)}"
        )
    if file.stat().st_size == 0:
        raise DataError(
            f"{file.name}: the file is empty (0 bytes); it needs a header and rows. {where(file)}"
        )
    try:
        if fmt == "parquet":
            df, types = _read_parquet(file)
            first_line, unnamed = 0, ()
        else:
            df, first_line = _read_delimited(
                file, fmt, header, None if column_names is None else list(column_names)
            )
            types = dict.fromkeys(df.columns, "text")
            unnamed = df.attrs.pop("unnamed", ())
    except UnicodeDecodeError as e:
        raise DataError(
            f"{file.name}: the file is not UTF-8 text (byte {e.object[e.start : e.start + 1]!r} at position "
            f"{e.start}); re-save it with UTF-8 encoding. {where(file)}"
        ) from e
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{file.name}: the file has no header and no rows. {where(file)}") from e
    except (ValueError, OSError, ImportError, pa.ArrowException) as e:
        if isinstance(e, DataError):
            raise
        reason = " ".join(str(e).split()).rstrip(".")
        label = {"csv": "CSV", "tsv": "TSV", "parquet": "Parquet"}[fmt]
        raise DataError(f"{file.name}: cannot read it as {label}: {reason}. {where(file)}") from e
    if len(df) == 0:
        raise DataError(f"{file.name}: the file has a header but no data rows. {where(file)}")
    return Table(file, df, types, first_line, unnamed)


def read_table(
    path: str | Path,
    formats: tuple[str, ...] = ("csv", "tsv", "parquet"),
    header: bool = True,
    column_names: list[str] | tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """The cells of a user table as a DataFrame (see `read_user_table`; CSV / TSV cells are `str`)."""
    return read_user_table(path, formats, header, column_names).df


def blank_rows(cells: list[str]) -> np.ndarray:
    """Bool mask of cells that are empty or only whitespace."""
    return np.array([not c.strip() for c in cells], dtype=bool)


def require_filled(table: Table, cells: list[str], column: str, what: str, fix: str) -> None:
    """DataError naming the first row whose `what` cell (column `column`) is empty or whitespace.

    `what` is "an id", "a text", "a label"...; `fix` says what the user can do."""
    blank = blank_rows(cells)
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        noun = what.split(" ", 1)[1]
        raise DataError(
            f"{table.file.name}: {noun} column {column!r} is empty at {table.row(i)}; every row needs {what} "
            f"({fix}). {table.where()}"
        )


def id_values(table: Table, id_column: str | None) -> tuple[str, ...]:
    """Example ids: the id column verbatim, else `"<file stem>-<row>"`; DataError on empty / duplicates."""
    file = table.file
    if id_column is None:
        return tuple(f"{file.stem}-{i}" for i in range(len(table)))
    ids = table.texts(id_column, "id column")
    require_filled(table, ids, id_column, "an id", "fill it in, or leave id_column unset to number the rows")
    first: dict[str, int] = {}
    for i, k in enumerate(ids):
        if k in first:
            rows = [j for j, v in enumerate(ids) if v == k]
            at = ", ".join(table.row(j) for j in rows[:5]) + (" ..." if len(rows) > 5 else "")
            raise DataError(
                f"{file.name}: id column {id_column!r} has the duplicate value {k!r} at {at}; ids must be "
                f"unique (fix the ids or leave id_column unset to number the rows). {table.where()}"
            )
        first[k] = i
    return tuple(ids)


def label_values(table: Table, column: str) -> list[str]:
    """The label column as text with surrounding whitespace removed; DataError on an empty cell.

    Every non-empty spelling is a label (`NA`, `null`, `None` included); non-integer numeric
    labels are refused as continuous targets (see `_common.map_labels` for the numeric rule).
    """
    values = [v.strip() for v in table.texts(column, "label column")]
    require_filled(table, values, column, "a label", "fill it in or drop the row")
    return values


def split_values(table: Table, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the rows marked train / val / test in `column` (case-insensitive; other values refused)."""
    values = [v.strip().lower() for v in table.texts(column, "split column")]
    allowed = ("train", "val", "test")
    for i, v in enumerate(values):
        if v not in allowed:
            raw = table.texts(column, "split column")[i]
            raise DataError(
                f"{table.file.name}: split column {column!r} has the value {raw!r} at {table.row(i)}; each row "
                f"must say train, val or test. {table.where()}"
            )
    parts = tuple(np.array([i for i, v in enumerate(values) if v == p], dtype=np.int64) for p in allowed)
    if not len(parts[0]):
        raise DataError(
            f"{table.file.name}: split column {column!r} marks no row as train; at least one row must say "
            f"train. {table.where()}"
        )
    return parts


def label_classes(table: Table, column: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Labels `int64 [n]` and class names (the user's spellings) of a label column.

    See `_common.map_labels` for when labels are ordered as numbers. Refuses an empty cell,
    non-integer numeric labels (continuous targets) and a column with a single class.
    """
    file = table.file
    values = label_values(table, column)
    unique = list(dict.fromkeys(values))
    numbers = [decimal_number(v) for v in unique]
    if all(x is not None for x in numbers) and len(set(numbers)) == len(unique):
        fractional = [v for v, x in zip(unique, numbers, strict=True) if x != x.to_integral_value()]
        if fractional:
            i = values.index(fractional[0])
            raise DataError(
                f"{file.name}: label column {column!r} holds non-integer numbers ({table.row(i)} has "
                f"{values[i]!r}); labels must be classes (names or integers), not continuous targets. "
                f"{table.where()}"
            )
    labels, class_names = map_labels(values)
    if len(class_names) < 2:
        raise DataError(
            f"{file.name}: label column {column!r} has a single class ({class_names[0]!r}); "
            f"need at least two classes. {table.where()}"
        )
    return labels, class_names


def choose_parts(
    table: Table,
    labels: torch.Tensor,
    split_column: str | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / val / test positions: the user's `split_column`, else a seeded (stratified) split."""
    if not isinstance(stratify, bool):
        raise ConfigError(f"stratify must be true or false, got {stratify!r}.")
    if split_column is not None:
        return split_values(table, split_column)
    strata = labels.numpy() if stratify else None
    return split_by_fractions(len(table), val_fraction, test_fraction, seed, table.file.name, strata)


def check_roles(table: Table, roles: dict[str, str | None]) -> None:
    """Each named column exists and plays one role only (e.g. the label is not also the id)."""
    seen: dict[str, str] = {}
    for role, column in roles.items():
        if column is None:
            continue
        table.require(column, role)
        if column in seen:
            raise DataError(
                f"{table.file.name}: column {column!r} is given as both {seen[column]} and {role}; each column "
                f"can play one role. {table.where()}"
            )
        seen[column] = role
