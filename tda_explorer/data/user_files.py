"""Loaders for the user's own files: tables (CSV / TSV / Parquet) and image folders.

Each loader splits the rows into train / val / test with a seeded permutation
(`val_fraction`, `test_fraction`, `seed`; a non-zero fraction gets at least one row) and
returns a `DatasetSplits`. Labels may be strings or numbers: the sorted unique values become
classes `0..K-1`, and `class_names` are their string forms. Ids come from `id_column` when
given, else are `"<file stem>-<row>"` with `row` the 0-based data row (line `row + 2` of a
CSV/TSV, whose first line is the header).

Anything wrong with a file raises `DataError` naming the file, the row/column, and the fix.
Text files are read as UTF-8 (a byte-order mark is accepted). TSV files are read without
quote handling (tabs separate fields, quotes are text), CSV files with standard quoting.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Container, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from tda_explorer.data._common import (
    fingerprint,
    make_splits,
    map_labels,
    missing_column_message,
    spec_dict,
    split_by_fractions,
)
from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.errors import ConfigError, DataError

TABLE_FORMATS: dict[str, str] = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GRAY_MODES = ("L", "1", "LA")


def _where(file: Path) -> str:
    return f"(file: {file.resolve()})"


def _row(file: Path, i: int) -> str:
    """How a message names data row `i`: 0-based, plus the line number for text tables."""
    return f"row {i} (line {i + 2})" if file.suffix.lower() in (".csv", ".tsv") else f"row {i}"


def _existing(path: str | Path, folder: bool = False) -> Path:
    p = Path(path).expanduser()
    name = p.resolve().name or str(p)
    if not p.exists():
        raise DataError(f"{name}: path does not exist: {p.resolve()}. Check the spelling and the folder.")
    if folder and not p.is_dir():
        raise DataError(f"{name}: expected a folder with one sub-folder per class, got a file. {_where(p)}")
    if not folder and p.is_dir():
        raise DataError(f"{name}: expected a file, got a folder. {_where(p)}")
    return p


def read_table(
    path: str | Path, formats: tuple[str, ...] = ("csv", "tsv", "parquet"), text_na: bool = True
) -> pd.DataFrame:
    """Read a CSV / TSV / Parquet file (chosen by extension) into a DataFrame with >= 1 row.

    Args:
        path: the file.
        formats: the accepted formats ("csv", "tsv", "parquet").
        text_na: whether CSV/TSV cells such as "NA" or "null" mean missing (pandas' default); when
            False only empty cells do (for texts, where "null" may be a word).

    Raises:
        DataError: missing path, unsupported extension, empty file, not UTF-8, malformed content.
    """
    file = _existing(path)
    fmt = TABLE_FORMATS.get(file.suffix.lower())
    if fmt is None or fmt not in formats:
        allowed = ", ".join(e for e, f in TABLE_FORMATS.items() if f in formats)
        raise DataError(
            f"{file.name}: unsupported file extension {file.suffix or '(none)'!r}; use one of {allowed}. "
            f"{_where(file)}"
        )
    if file.stat().st_size == 0:
        raise DataError(
            f"{file.name}: the file is empty (0 bytes); it needs a header and rows. {_where(file)}"
        )
    try:
        if fmt == "parquet":
            df = pd.read_parquet(file)
        else:
            sep, quoting = ("\t", csv.QUOTE_NONE) if fmt == "tsv" else (",", csv.QUOTE_MINIMAL)
            df = pd.read_csv(
                file, sep=sep, quoting=quoting, encoding="utf-8-sig", keep_default_na=text_na, na_values=[""]
            )
    except UnicodeDecodeError as e:
        raise DataError(
            f"{file.name}: the file is not UTF-8 text (byte {e.object[e.start : e.start + 1]!r} at position "
            f"{e.start}); re-save it with UTF-8 encoding. {_where(file)}"
        ) from e
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{file.name}: the file has no header and no rows. {_where(file)}") from e
    except (ValueError, OSError, ImportError) as e:
        reason = " ".join(str(e).split()).rstrip(".")
        label = {"csv": "CSV", "tsv": "TSV", "parquet": "Parquet"}[fmt]
        raise DataError(f"{file.name}: cannot read it as {label}: {reason}. {_where(file)}") from e
    if len(df) == 0:
        raise DataError(f"{file.name}: the file has a header but no data rows. {_where(file)}")
    df.columns = [str(c) for c in df.columns]
    return df


def _require(df: pd.DataFrame, file: Path, column: object, role: str) -> str:
    if not isinstance(column, str) or column not in df.columns:
        raise DataError(missing_column_message(file, str(column), role, list(df.columns)))
    return column


def _blank(series: pd.Series) -> np.ndarray:
    """Bool mask of missing cells: NaN/None or strings that are empty after stripping."""
    return (series.isna() | series.map(lambda v: isinstance(v, str) and not v.strip())).to_numpy()


def _labels(df: pd.DataFrame, file: Path, column: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    blank = _blank(df[column])
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        raise DataError(
            f"{file.name}: label column {column!r} is empty at {_row(file, i)}; every row needs a label "
            f"(fill it in or drop the row). {_where(file)}"
        )
    values = [v.strip() if isinstance(v, str) else v for v in df[column].tolist()]
    nested = [
        i
        for i, v in enumerate(values)
        if isinstance(v, Container | Mapping) and not isinstance(v, str | bytes)
    ]
    if nested:
        i = nested[0]
        raise DataError(
            f"{file.name}: label column {column!r} holds {type(values[i]).__name__} values ({_row(file, i)} has "
            f"{values[i]!r:.60}); labels must be single values (class names or integers). {_where(file)}"
        )
    fractional = [i for i, v in enumerate(values) if isinstance(v, float) and not v.is_integer()]
    if fractional:
        i = fractional[0]
        raise DataError(
            f"{file.name}: label column {column!r} holds non-integer numbers ({_row(file, i)} has "
            f"{values[i]!r}); labels must be classes (names or integers), not continuous targets. "
            f"{_where(file)}"
        )
    labels, class_names = map_labels(values)
    if len(class_names) < 2:
        raise DataError(
            f"{file.name}: label column {column!r} has a single class ({class_names[0]!r}); "
            f"need at least two classes. {_where(file)}"
        )
    return labels, class_names


def _ids(df: pd.DataFrame, file: Path, id_column: str | None) -> tuple[str, ...]:
    if id_column is None:
        return tuple(f"{file.stem}-{i}" for i in range(len(df)))
    col = df[id_column]
    blank = _blank(col)
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        raise DataError(f"{file.name}: id column {id_column!r} is empty at {_row(file, i)}. {_where(file)}")
    ids = [
        str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v).strip()
        for v in col.tolist()
    ]
    first: dict[str, int] = {}
    for i, k in enumerate(ids):
        if k in first:
            rows = [j for j, v in enumerate(ids) if v == k]
            where = ", ".join(_row(file, j) for j in rows[:5]) + (" ..." if len(rows) > 5 else "")
            raise DataError(
                f"{file.name}: id column {id_column!r} has the duplicate value {k!r} at {where}; ids must be "
                f"unique (fix the ids or leave id_column unset to number the rows). {_where(file)}"
            )
        first[k] = i
    return tuple(ids)


def _features(df: pd.DataFrame, file: Path, columns: list[str]) -> torch.Tensor:
    """Numeric columns as `float32 [n, d]`; DataError on text values, missing values and inf."""
    out = np.empty((len(df), len(columns)), dtype=np.float32)
    for j, c in enumerate(columns):
        col = df[c]
        if pd.api.types.is_bool_dtype(col):
            col = col.astype(np.float64)
        elif not pd.api.types.is_numeric_dtype(col):
            num = pd.to_numeric(col, errors="coerce")
            bad = (num.isna() & ~_blank(col)).to_numpy()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{file.name}: feature column {c!r} is not numeric: {_row(file, i)} has value "
                    f"{col.iloc[i]!r}; convert the column to numbers or leave it out of feature_columns. "
                    f"{_where(file)}"
                )
            col = num
        with np.errstate(over="ignore", invalid="ignore"):
            out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
        bad_rows = np.flatnonzero(~np.isfinite(out[:, j]))
        if len(bad_rows):
            i = int(bad_rows[0])
            what = (
                "a missing value (empty or NaN)"
                if np.isnan(out[i, j])
                else f"a non-finite value ({out[i, j]})"
            )
            raise DataError(
                f"{file.name}: feature column {c!r} has {what} at {_row(file, i)}; fill in or drop such rows "
                f"(values must be finite and fit in float32). {_where(file)}"
            )
    return torch.from_numpy(out)


def load_tabular(
    path: str | Path,
    label_column: str,
    feature_columns: list[str] | tuple[str, ...] | None = None,
    id_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> DatasetSplits:
    """A numeric table (CSV / TSV / Parquet) as a tabular dataset; features are kept raw (no scaling).

    Args:
        path: the file; its extension (.csv, .tsv, .parquet, .pq) picks the reader.
        label_column: the column holding class labels (strings or numbers).
        feature_columns: numeric input columns; default every column except label and id.
        id_column: a column of unique example ids; default "<file stem>-<row>".
        val_fraction: fraction of rows for validation.
        test_fraction: fraction of rows for test.
        seed: seed of the split.

    Returns:
        DatasetSplits of kind "tabular" with inputs `float32 [n, d]` (d = number of feature columns,
        in the given / file order); `spec["fingerprint"]` hashes the file's bytes.
    """
    file = Path(path).expanduser()
    df = read_table(file)
    _require(df, file, label_column, "label_column")
    if id_column is not None:
        _require(df, file, id_column, "id_column")
    if feature_columns is None:
        columns = [c for c in df.columns if c not in (label_column, id_column)]
    else:
        if isinstance(feature_columns, str):
            raise ConfigError(
                f"feature_columns must be a list of column names, got the string {feature_columns!r}."
            )
        columns = [_require(df, file, c, "one of feature_columns") for c in feature_columns]
        clash = [c for c in columns if c in (label_column, id_column)]
        if clash:
            raise DataError(
                f"{file.name}: column {clash[0]!r} is both a feature and the label/id column; remove it "
                f"from feature_columns. {_where(file)}"
            )
    if not columns:
        raise DataError(f"{file.name}: no feature columns left besides the label/id columns. {_where(file)}")
    ids = _ids(df, file, id_column)
    labels, class_names = _labels(df, file, label_column)
    inputs = _features(df, file, columns)
    full = ExampleSet(
        ids, inputs, labels, class_names, "tabular", name=file.stem, meta={"feature_names": columns}
    )
    parts = split_by_fractions(len(full), val_fraction, test_fraction, seed, file.name)
    options = {
        "label_column": label_column,
        "feature_columns": None if feature_columns is None else list(feature_columns),
        "id_column": id_column,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    }
    spec = {**spec_dict("tabular", path, options, seed), "fingerprint": fingerprint([file])}
    return make_splits(full, parts, spec)


def load_text_table(
    path: str | Path,
    text_column: str,
    label_column: str,
    id_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> DatasetSplits:
    """A table of texts and labels (CSV / TSV / Parquet) as a text dataset.

    Args:
        path: the file; .csv (standard quoting), .tsv (tab-separated, no quoting), .parquet / .pq.
        text_column: the column holding the texts (no cell may be empty).
        label_column: the column holding class labels (strings or numbers).
        id_column: a column of unique example ids; default "<file stem>-<row>".
        val_fraction: fraction of rows for validation.
        test_fraction: fraction of rows for test.
        seed: seed of the split.

    Returns:
        DatasetSplits of kind "text" with inputs a tuple of n strings; `spec["fingerprint"]` hashes the file.
    """
    file = Path(path).expanduser()
    df = read_table(file, text_na=False)
    _require(df, file, text_column, "text_column")
    _require(df, file, label_column, "label_column")
    if id_column is not None:
        _require(df, file, id_column, "id_column")
    blank = _blank(df[text_column])
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        raise DataError(
            f"{file.name}: text column {text_column!r} is empty at {_row(file, i)}; every row needs a text "
            f"(fill it in or drop the row). {_where(file)}"
        )
    texts = tuple(str(v) for v in df[text_column].tolist())
    ids = _ids(df, file, id_column)
    labels, class_names = _labels(df, file, label_column)
    full = ExampleSet(ids, texts, labels, class_names, "text", name=file.stem)
    parts = split_by_fractions(len(full), val_fraction, test_fraction, seed, file.name)
    options = {
        "text_column": text_column,
        "label_column": label_column,
        "id_column": id_column,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    }
    spec = {**spec_dict("text", path, options, seed), "fingerprint": fingerprint([file])}
    return make_splits(full, parts, spec)


def _image_size(image_size: object) -> tuple[int, int] | None:
    if image_size is None:
        return None
    ok = isinstance(image_size, (tuple, list)) and len(image_size) == 2
    if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in image_size):
        raise ConfigError(f"image_size must be (height, width) with two positive ints, got {image_size!r}.")
    return int(image_size[0]), int(image_size[1])


def _open_image(file: Path, root: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():  # PIL only warns between MAX_IMAGE_PIXELS and twice that: refuse too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                im.load()
                return im.copy() if im.mode != "P" else im.convert("RGBA")
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        rel = file.relative_to(root).as_posix()
        raise DataError(
            f"{rel}: cannot read this image ({e}); replace or remove the file. (file: {file})"
        ) from e


def load_image_folder(
    path: str | Path,
    image_size: tuple[int, int] | list[int] | None = None,
    grayscale: bool | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> DatasetSplits:
    """A folder with one sub-folder of images per class (class names = sorted sub-folder names).

    Files with an image extension (`IMAGE_EXTENSIONS`) directly inside each class folder are read;
    other files and hidden entries are ignored.

    Args:
        path: the root folder.
        image_size: `(H, W)` to resize every image to; default: all images must share one size.
        grayscale: True / False forces one / three channels; default one channel iff every
            image is grayscale ("L", "1" or "LA" mode).
        val_fraction: fraction of images for validation.
        test_fraction: fraction of images for test.
        seed: seed of the split.

    Returns:
        DatasetSplits of kind "image" with inputs `float32 [n, C, H, W]` in [0, 1] (C = 1 or 3) and
        ids the relative paths "class/file.png"; `spec["fingerprint"]` hashes the image files.
    """
    size = _image_size(image_size)
    if grayscale is not None and not isinstance(grayscale, bool):
        raise ConfigError(f"grayscale must be True, False or None, got {grayscale!r}.")
    root = _existing(path, folder=True).resolve()
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"{root.name}: found {len(classes)} class sub-folder(s) {classes}; an image folder needs one "
            f"sub-folder per class and at least two classes. (folder: {root})"
        )
    files: list[Path] = []
    label_list: list[int] = []
    for k, name in enumerate(classes):
        found = sorted(
            f
            for f in (root / name).iterdir()
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise DataError(
                f"{name}/: class folder has no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove "
                f"the folder. (folder: {root / name})"
            )
        files += found
        label_list += [k] * len(found)

    images = [_open_image(f, root) for f in files]
    if size is None:
        w0, h0 = images[0].size
        for f, im in zip(files, images, strict=True):
            if im.size != (w0, h0):
                rel, first = f.relative_to(root).as_posix(), files[0].relative_to(root).as_posix()
                raise DataError(
                    f"{rel}: image is {im.size[1]}x{im.size[0]} (height x width) but {first} is {h0}x{w0}; "
                    f"images must share one size: pass image_size=({h0}, {w0}) to resize all. (file: {f})"
                )
        size = (h0, w0)
    gray = all(im.mode in _GRAY_MODES for im in images) if grayscale is None else grayscale
    mode = "L" if gray else "RGB"
    arrays = []
    for im in images:
        im = im.convert(mode)
        if im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.uint8))
    stacked = np.stack(arrays).astype(np.float32) / 255.0
    inputs = torch.from_numpy(stacked[:, None] if gray else stacked.transpose(0, 3, 1, 2).copy())
    ids = tuple(f.relative_to(root).as_posix() for f in files)
    labels = torch.tensor(label_list, dtype=torch.int64)
    full = ExampleSet(ids, inputs, labels, tuple(classes), "image", name=root.name)
    parts = split_by_fractions(len(full), val_fraction, test_fraction, seed, root.name)
    options = {
        "image_size": None if image_size is None else list(image_size),
        "grayscale": grayscale,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    }
    spec = {**spec_dict("images", path, options, seed), "fingerprint": fingerprint(files, root)}
    return make_splits(full, parts, spec)
