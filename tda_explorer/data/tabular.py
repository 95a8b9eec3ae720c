"""Tabular datasets from the user's tables: features converted deliberately, statistics fitted on train.

How a feature column is read (`classify_column`):

- **numeric** when every non-missing cell is a plain decimal number (`-1.5`, `2e3`, `007`; the
  spellings `inf` / `infinity` are numbers too and are then refused as non-finite), or when every
  cell is `True` / `False` (any case; read as 1 / 0). Parquet integer, float, decimal and boolean
  columns are numeric. A missing cell (empty, or `NA`, `N/A`, `NaN`, `null`, `None`, `nil`, `#N/A`,
  `<NA>`, any case) in a numeric column is refused naming the row, and so is a value that is not
  finite in float32.
- **categorical** when the cells are text (fewer than half of them numbers): one-hot encoded with
  the vocabulary (sorted distinct values) of the TRAIN rows, one input per category named
  `"<column>=<value>"`; a value seen only in validation / test rows encodes as all zeros.
  Refused naming the column with `categorical="error"`, when every row has its own value (an
  identifier, not a category) or when it has more than `MAX_CATEGORIES` values. Here only an
  empty cell is missing (refused); `NA` and the like are categories.
- a column of mostly numbers with some text is refused naming the row and the value: a typo is
  not a category.

With `standardize=True` (the default) each numeric column is standardised with the mean and the
standard deviation (ddof 0) of the TRAIN rows only (a constant column is divided by 1). The
fitted statistics and vocabularies are `meta["preprocessing"]` of every split
(`TablePreprocessor.to_dict()`); `TablePreprocessor.from_dict(d).transform_frame(df)` applies them
to new rows (e.g. queries), so the preprocessing is reproducible without the training file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from tda_explorer.data._common import DECIMAL_PATTERN, decimal_number, fingerprint, make_splits, spec_dict
from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.data.tables import (
    NUMERIC_TYPES,
    Table,
    check_roles,
    choose_parts,
    id_values,
    label_classes,
    read_user_table,
)
from tda_explorer.errors import ConfigError, DataError

MAX_CATEGORIES = 100
"""Most distinct values a categorical feature column may have (more is refused, naming the column)."""

MISSING_SPELLINGS = frozenset(["", "na", "n/a", "nan", "-nan", "+nan", "null", "none", "nil", "#n/a", "<na>"])
"""Cell texts (lower-cased, stripped) that mean "missing" in a numeric feature column."""

_INFINITIES = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "infinity": math.inf,
               "+infinity": math.inf, "-infinity": -math.inf}  # fmt: skip


def _number(cell: str) -> float | None:
    """A feature cell as a float (NaN when missing), or None when it is not a number."""
    text = cell.strip()
    low = text.lower()
    if low in MISSING_SPELLINGS:
        return math.nan
    if low in _INFINITIES:
        return _INFINITIES[low]
    if decimal_number(text) is None:
        return None
    return float(text)


def _plain_numbers(cells: list[str]) -> np.ndarray | None:
    """Fast path of `_number` for a column of plain decimals only: `float64 [n]`, else None."""
    stripped = pd.Series(cells, dtype="str").str.strip()
    if not bool(stripped.str.fullmatch(DECIMAL_PATTERN).all()):
        return None
    return np.asarray(stripped.to_numpy(dtype=object), dtype=np.float64)


@dataclass
class _Source:
    """Where conversion messages point: a file (rows with line numbers) or a frame of new rows."""

    name: str
    row: object  # Callable[[int], str]
    where: str


def classify_column(
    column: str, cells: list[str] | np.ndarray, categorical: str, src: _Source
) -> tuple[str, np.ndarray | list[str]]:
    """Decide how a feature column is read (module docstring) and convert it.

    Args:
        column: the column name (for messages).
        cells: the cells as text, or `float64 [n]` for a typed numeric column.
        categorical: "onehot" to accept text columns, "error" to refuse them.
        src: where messages point.

    Returns:
        `("numeric", float64 [n])` (finite, checked) or `("categorical", list of n strings)`.
    """
    if isinstance(cells, np.ndarray):
        return "numeric", _check_finite(column, cells.astype(np.float64), src)
    fast = _plain_numbers(cells)
    if fast is not None:
        return "numeric", _check_finite(column, fast, src)
    parsed = [_number(c) for c in cells]
    text_rows = [i for i, x in enumerate(parsed) if x is None]
    if not text_rows:
        return "numeric", _check_finite(column, np.asarray(parsed, dtype=np.float64), src)
    lowered = {c.strip().lower() for c in cells}
    if lowered <= {"true", "false"}:
        return "numeric", np.asarray([c.strip().lower() == "true" for c in cells], dtype=np.float64)
    n_numbers = sum(1 for x in parsed if x is not None and not math.isnan(x))
    i = text_rows[0]
    if n_numbers >= len(text_rows):
        raise DataError(
            f"{src.name}: feature column {column!r} is not numeric: {src.row(i)} has value {cells[i]!r}; "
            f"fix the value, convert the column to numbers, or leave it out of feature_columns. {src.where}"
        )
    if categorical == "error":
        raise DataError(
            f"{src.name}: feature column {column!r} holds text ({src.row(i)} has {cells[i]!r}) and "
            f"categorical='error' refuses text columns; convert it to numbers, leave it out of "
            f"feature_columns, or use categorical='onehot' to one-hot encode it. {src.where}"
        )
    return "categorical", _check_categories(column, list(cells), src)


def _check_finite(column: str, values: np.ndarray, src: _Source) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        as32 = values.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(as32))
    if len(bad):
        i = int(bad[0])
        what = (
            "a missing value (empty or NaN)" if np.isnan(values[i]) else f"a non-finite value ({values[i]})"
        )
        raise DataError(
            f"{src.name}: feature column {column!r} has {what} at {src.row(i)}; fill in or drop such rows "
            f"(values must be finite and fit in float32). {src.where}"
        )
    return values


def _check_categories(column: str, cells: list[str], src: _Source) -> list[str]:
    empty = [i for i, c in enumerate(cells) if not c.strip()]
    if empty:
        raise DataError(
            f"{src.name}: feature column {column!r} is empty at {src.row(empty[0])}; fill in a category "
            f"or drop the row. {src.where}"
        )
    distinct = len(set(cells))
    if len(cells) > 1 and distinct == len(cells):
        raise DataError(
            f"{src.name}: feature column {column!r} holds text that looks like an identifier (every row has "
            f"its own value, e.g. {src.row(0)} has {cells[0]!r}); pass it as id_column or leave it out of "
            f"feature_columns. {src.where}"
        )
    if distinct > MAX_CATEGORIES:
        raise DataError(
            f"{src.name}: feature column {column!r} holds text with {distinct} distinct values (more than "
            f"{MAX_CATEGORIES} categories); leave it out of feature_columns or encode it yourself. {src.where}"
        )
    return cells


@dataclass
class TablePreprocessor:
    """Feature preprocessing of a table, fitted on the training rows (module docstring).

    `__init__` stores settings; `fit` learns the statistics (attributes ending in `_`);
    `transform` maps converted columns to `float32 [n, d]`.

    Attributes:
        columns: feature columns, in input order.
        kinds: column -> "numeric" | "categorical".
        standardize: whether numeric columns are standardised.
        mean_: numeric column -> training mean (0 when not standardising).
        std_: numeric column -> training standard deviation (1 when constant / not standardising).
        vocab_: categorical column -> sorted training categories.
    """

    columns: list[str]
    kinds: dict[str, str]
    standardize: bool = True
    mean_: dict[str, float] = field(default_factory=dict)
    std_: dict[str, float] = field(default_factory=dict)
    vocab_: dict[str, list[str]] = field(default_factory=dict)

    def fit(self, values: dict[str, np.ndarray | list[str]], rows: np.ndarray) -> TablePreprocessor:
        """Learn means / standard deviations / vocabularies from `rows` (the training positions)."""
        for c in self.columns:
            if self.kinds[c] == "numeric":
                x = np.asarray(values[c], dtype=np.float64)[rows]
                mean, std = (float(x.mean()), float(x.std())) if self.standardize and len(x) else (0.0, 1.0)
                self.mean_[c], self.std_[c] = mean, (std if std > 0 and math.isfinite(std) else 1.0)
            else:
                self.vocab_[c] = sorted({values[c][i] for i in rows})
        return self

    @property
    def feature_names_(self) -> list[str]:
        """One name per input: the numeric column's name, or `"<column>=<category>"`."""
        if self.kinds and not (self.mean_ or self.vocab_):
            raise ConfigError("TablePreprocessor: call fit before using it.")
        names: list[str] = []
        for c in self.columns:
            names += [c] if self.kinds[c] == "numeric" else [f"{c}={v}" for v in self.vocab_[c]]
        return names

    def transform(self, values: dict[str, np.ndarray | list[str]]) -> torch.Tensor:
        """Converted columns (`classify_column` output) -> `float32 [n, d]` (d = len(feature_names_))."""
        blocks = []
        for c in self.columns:
            if self.kinds[c] == "numeric":
                x = (np.asarray(values[c], dtype=np.float64) - self.mean_[c]) / self.std_[c]
                blocks.append(x[:, None])
            else:
                code = {v: k for k, v in enumerate(self.vocab_[c])}
                onehot = np.zeros((len(values[c]), len(code)))
                for i, v in enumerate(values[c]):
                    if v in code:
                        onehot[i, code[v]] = 1.0
                blocks.append(onehot)
        return torch.from_numpy(np.concatenate(blocks, axis=1).astype(np.float32))

    def transform_frame(self, df: pd.DataFrame, name: str = "new rows") -> torch.Tensor:
        """Apply the fitted preprocessing to new rows (e.g. queries) given as a DataFrame.

        Cells are read like a file's: strings by the module docstring's rules, numbers as numbers.
        A missing column, a bad value in a numeric column or an empty category raises DataError.
        """
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise DataError(
                f"{name}: missing feature column(s) {missing}; give every column of {self.columns}."
            )
        src = _Source(name, lambda i: f"row {i}", "")
        values: dict[str, np.ndarray | list[str]] = {}
        for c in self.columns:
            col = df[c]
            if self.kinds[c] == "numeric" and pd.api.types.is_numeric_dtype(col):
                values[c] = _check_finite(c, col.to_numpy(dtype=np.float64, na_value=np.nan), src)
            elif self.kinds[c] == "numeric":
                values[c] = classify_column(c, [str(v) for v in col.tolist()], "error", src)[1]
            else:
                values[c] = _check_categories_lenient(c, [str(v) for v in col.tolist()], src)
        return self.transform(values)

    def to_dict(self) -> dict:
        """JSON-able settings and fitted statistics."""
        return {"columns": list(self.columns), "kinds": dict(self.kinds), "standardize": self.standardize,
                "mean": dict(self.mean_), "std": dict(self.std_), "vocab": {k: list(v) for k, v in self.vocab_.items()}}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> TablePreprocessor:
        """Inverse of `to_dict`."""
        return cls(list(d["columns"]), dict(d["kinds"]), bool(d["standardize"]),
                   dict(d["mean"]), dict(d["std"]), {k: list(v) for k, v in d["vocab"].items()})  # fmt: skip


def _check_categories_lenient(column: str, cells: list[str], src: _Source) -> list[str]:
    empty = [i for i, c in enumerate(cells) if not c.strip()]
    if empty:
        raise DataError(f"{src.name}: feature column {column!r} is empty at {src.row(empty[0])}.")
    return cells


def _feature_columns(table: Table, feature_columns: object, taken: list[str | None]) -> list[str]:
    if feature_columns is None:  # every named column but the label / id / split ones
        return [c for c in table.columns if c not in taken and c not in table.unnamed]
    if isinstance(feature_columns, str) or not isinstance(feature_columns, (list, tuple)):
        raise ConfigError(f"feature_columns must be a list of column names, got {feature_columns!r}.")
    columns = [table.require(c, "one of feature_columns") for c in feature_columns]
    clash = [c for c in columns if c in taken]
    if clash:
        raise DataError(
            f"{table.file.name}: column {clash[0]!r} is both a feature and the label/id/split column; remove "
            f"it from feature_columns. {table.where()}"
        )
    return columns


def load_tabular(
    path: str | Path,
    label_column: str = "label",
    feature_columns: list[str] | None = None,
    id_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    standardize: bool = True,
    categorical: Literal["onehot", "error"] = "onehot",
    stratify: bool = True,
    split_column: str | None = None,
    header: bool = True,
    column_names: list[str] | None = None,
) -> DatasetSplits:
    """A table (CSV / TSV / Parquet) as a tabular dataset (features: see the module docstring).

    Args:
        path: the file; its extension (.csv, .tsv, .parquet, .pq) picks the reader.
        label_column: the column holding class labels (kept as the user's strings; see
            `tables.label_classes`); default "label".
        feature_columns: input columns; default every column except label, id and split, and
            except columns with an empty header (e.g. the row index pandas' `to_csv` writes, which
            would leak the file's order; list it as "Unnamed: 0" to use it anyway).
        id_column: a column of unique example ids (kept verbatim); default "<file stem>-<row>".
        val_fraction: fraction of rows for validation (ignored with `split_column`).
        test_fraction: fraction of rows for test (ignored with `split_column`).
        seed: seed of the split.
        standardize: standardise numeric features with train-split mean / std.
        categorical: "onehot" encodes text feature columns, "error" refuses them.
        stratify: keep each class's share in every split (every class in every split where possible).
        split_column: a column saying `train` / `val` / `test` per row: the user's split, kept exactly.
        header: whether the first line of a CSV / TSV names the columns (else see `column_names`).
        column_names: names of the columns of a headerless file (default "0", "1", ...).

    Returns:
        DatasetSplits of kind "tabular" with inputs `float32 [n, d]`; each split's
        `meta["feature_names"]` names the d inputs and `meta["preprocessing"]` holds the fitted
        `TablePreprocessor`; `spec["fingerprint"]` hashes the file's bytes and `spec["columns"]`
        names the columns used.
    """
    if categorical not in ("onehot", "error"):
        raise ConfigError(f"categorical must be 'onehot' or 'error', got {categorical!r}.")
    if not isinstance(standardize, bool):
        raise ConfigError(f"standardize must be true or false, got {standardize!r}.")
    file = Path(path).expanduser()
    table = read_user_table(file, header=header, column_names=column_names)
    roles = {"label_column": label_column, "id_column": id_column, "split_column": split_column}
    check_roles(table, roles)
    columns = _feature_columns(table, feature_columns, [label_column, id_column, split_column])
    if not columns:
        raise DataError(f"{file.name}: no feature columns left besides the label/id columns. {table.where()}")
    ids = id_values(table, id_column)
    labels, class_names = label_classes(table, label_column)
    src = _Source(file.name, table.row, table.where())
    values, kinds = {}, {}
    for c in columns:
        table.refuse_type(c, "feature column", "a feature")
        cells = table.numbers(c) if table.types[c] in NUMERIC_TYPES else table.texts(c, "feature column")
        kinds[c], values[c] = classify_column(c, cells, categorical, src)
    parts = choose_parts(table, labels, split_column, val_fraction, test_fraction, seed, stratify)
    pre = TablePreprocessor(columns, kinds, standardize).fit(values, parts[0])
    meta = {"feature_names": pre.feature_names_, "preprocessing": pre.to_dict(),
            "columns": {"label": label_column, "id": id_column, "split": split_column, "features": columns}}  # fmt: skip
    full = ExampleSet(ids, pre.transform(values), labels, class_names, "tabular", name=file.stem, meta=meta)
    options = {
        "label_column": label_column,
        "feature_columns": None if feature_columns is None else list(feature_columns),
        "id_column": id_column,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "standardize": standardize,
        "categorical": categorical,
        "stratify": stratify,
        "split_column": split_column,
        "header": header,
        "column_names": None if column_names is None else list(column_names),
    }
    spec = {**spec_dict("tabular", path, options, seed), "fingerprint": fingerprint([file]),
            "columns": meta["columns"]}  # fmt: skip
    return make_splits(full, parts, spec)
