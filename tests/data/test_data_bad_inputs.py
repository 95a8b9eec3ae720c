"""Every bad user input raises DataError naming the file and the row / column, and saying what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tda_explorer.data import load_image_folder, load_tabular, load_text_table
from tda_explorer.errors import ConfigError, DataError


def _error(fn, *args, **kwargs) -> str:
    """Call `fn` expecting a DataError; return its message (and check it is not a bare library error)."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def _tabular_error(tmp_path: Path, text: str, name: str = "data.csv") -> str:
    """The error of `load_tabular` on a CSV file holding `text` (label column "y")."""
    return _error(load_tabular, _csv(tmp_path, text, name=name), label_column="y")


def _csv(tmp_path: Path, text: str, name: str = "data.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


# --- columns ---------------------------------------------------------------------------------------


def test_misspelled_label_column(table_csv: Path):
    msg = _error(load_tabular, table_csv, label_column="lable")
    assert "animals.csv" in msg and "'lable'" in msg
    assert "Did you mean 'label'?" in msg
    assert "'uid', 'height', 'weight', 'smoker', 'label'" in msg  # lists the available columns


def test_missing_feature_id_and_text_columns(table_csv: Path, tmp_path: Path, text_df: pd.DataFrame):
    msg = _error(load_tabular, table_csv, label_column="label", feature_columns=["height", "Wieght"])
    assert "animals.csv" in msg and "'Wieght'" in msg and "Did you mean 'weight'?" in msg
    msg = _error(load_tabular, table_csv, label_column="label", id_column="ID")
    assert "animals.csv" in msg and "'ID'" in msg and "Did you mean 'uid'?" in msg
    path = tmp_path / "reviews.csv"
    text_df.to_csv(path, index=False)
    msg = _error(load_text_table, path, text_column="txt", label_column="stars")
    assert "reviews.csv" in msg and "'txt'" in msg and "Did you mean 'text'?" in msg
    msg = _error(load_text_table, path, text_column="text", label_column="zzzz")
    assert "reviews.csv" in msg and "'zzzz'" in msg and "Available columns: 'id', 'text', 'stars'" in msg


def test_label_listed_as_feature(table_csv: Path):
    msg = _error(load_tabular, table_csv, label_column="label", feature_columns=["height", "label"])
    assert "animals.csv" in msg and "'label'" in msg and "feature_columns" in msg


# --- cell values -----------------------------------------------------------------------------------


def test_non_numeric_feature(tmp_path: Path):
    msg = _tabular_error(tmp_path, "a,b,y\n1,2,0\n3,4,1\n5,seven,0\n7,8,1\n")
    assert "data.csv" in msg and "'b'" in msg and "row 2" in msg and "'seven'" in msg
    # an id-like text column is not silently used as a feature either
    msg = _tabular_error(tmp_path, "name,x,y\nann,1,0\nbob,2,1\n", name="people.csv")
    assert "people.csv" in msg and "'name'" in msg and "row 0" in msg and "'ann'" in msg


def test_nan_and_inf_features(tmp_path: Path):
    msg = _tabular_error(tmp_path, "a,b,y\n1,2,0\n3,,1\n5,6,0\n")
    assert "data.csv" in msg and "'b'" in msg and "row 1" in msg and "missing" in msg
    msg = _tabular_error(tmp_path, "a,b,y\n1,2,0\n3,4,1\n5,6,0\ninf,8,1\n", name="inf.csv")
    assert "inf.csv" in msg and "'a'" in msg and "row 3" in msg and "inf" in msg
    pq = tmp_path / "nan.parquet"
    pd.DataFrame({"a": [1.0, 2.0, np.nan], "y": [0, 1, 0]}).to_parquet(pq)
    msg = _error(load_tabular, pq, label_column="y")
    assert "nan.parquet" in msg and "'a'" in msg and "row 2" in msg
    msg = _tabular_error(tmp_path, "a,y\n1,0\n1e300,1\n", name="huge.csv")  # does not fit in float32
    assert "huge.csv" in msg and "'a'" in msg and "row 1" in msg and "float32" in msg


def test_missing_labels(tmp_path: Path):
    msg = _tabular_error(tmp_path, "a,y\n1,cat\n2,dog\n3,\n4,cat\n")
    assert "data.csv" in msg and "'y'" in msg and "row 2" in msg and "label" in msg
    path = _csv(tmp_path, "t,y\nhello,cat\nworld,  \n", name="texts.csv")
    msg = _error(load_text_table, path, text_column="t", label_column="y")
    assert "texts.csv" in msg and "row 1" in msg


def test_continuous_labels(tmp_path: Path):
    msg = _tabular_error(tmp_path, "a,y\n1,0\n2,1.0\n3,0.5\n", name="reg.csv")
    assert "reg.csv" in msg and "'y'" in msg and "row 2" in msg and "0.5" in msg


def test_single_class(tmp_path: Path):
    msg = _tabular_error(tmp_path, "a,y\n1,cat\n2,cat\n3,cat\n")
    assert "data.csv" in msg and "'y'" in msg and "'cat'" in msg and "at least two" in msg


def test_empty_text_cells(tmp_path: Path):
    path = _csv(tmp_path, 'text,label\nfine,0\n"",1\nok,0\n', name="reviews.csv")
    msg = _error(load_text_table, path, text_column="text", label_column="label")
    assert "reviews.csv" in msg and "'text'" in msg and "row 1" in msg and "empty" in msg
    path = tmp_path / "reviews.tsv"
    path.write_text("text\tlabel\nfine\t0\nok\t1\n   \t0\n", encoding="utf-8")
    msg = _error(load_text_table, path, text_column="text", label_column="label")
    assert "reviews.tsv" in msg and "row 2" in msg


def test_duplicate_ids(tmp_path: Path):
    path = _csv(tmp_path, "id,a,y\nx1,1,0\nx2,2,1\nx3,3,0\nx2,4,1\n")
    msg = _error(load_tabular, path, label_column="y", id_column="id")
    assert "data.csv" in msg and "'id'" in msg and "'x2'" in msg and "row 1" in msg and "row 3" in msg
    path = _csv(tmp_path, "id,a,y\nx1,1,0\n,2,1\n", name="noid.csv")
    msg = _error(load_tabular, path, label_column="y", id_column="id")
    assert "noid.csv" in msg and "row 1" in msg


# --- whole files -----------------------------------------------------------------------------------


def test_path_does_not_exist(tmp_path: Path):
    msg = _error(load_tabular, tmp_path / "nope.csv", label_column="y")
    assert "nope.csv" in msg and "does not exist" in msg
    msg = _error(load_image_folder, tmp_path / "no_images")
    assert "no_images" in msg and "does not exist" in msg


def test_unsupported_extension(tmp_path: Path):
    msg = _tabular_error(tmp_path, "a,y\n1,0\n", name="data.xlsx")
    assert "data.xlsx" in msg and "'.xlsx'" in msg and ".csv" in msg and ".parquet" in msg


def test_empty_files(tmp_path: Path):
    msg = _tabular_error(tmp_path, "", name="zero.csv")
    assert "zero.csv" in msg and "0 bytes" in msg
    msg = _tabular_error(tmp_path, "a,y\n", name="header.csv")
    assert "header.csv" in msg and "no data rows" in msg
    path = _csv(tmp_path, "\n\n", name="blank.csv")
    msg = _error(load_text_table, path, text_column="t", label_column="y")
    assert "blank.csv" in msg and "no header" in msg
    pq = tmp_path / "empty.parquet"
    pd.DataFrame({"a": pd.Series([], dtype=float), "y": pd.Series([], dtype=int)}).to_parquet(pq)
    msg = _error(load_tabular, pq, label_column="y")
    assert "empty.parquet" in msg and "no data rows" in msg


def test_not_utf8(tmp_path: Path):
    path = _csv(
        tmp_path, "text,label\ncaf\u00e9 cr\u00e8me,0\nthe end,1\n", name="latin.csv", encoding="latin-1"
    )
    msg = _error(load_text_table, path, text_column="text", label_column="label")
    assert "latin.csv" in msg and "not UTF-8" in msg and "re-save" in msg


def test_malformed_csv_and_parquet(tmp_path: Path):
    msg = _tabular_error(tmp_path, "a,y\n1,0\n2,1,3,4\n", name="ragged.csv")
    assert "ragged.csv" in msg and "line 3" in msg
    pq = tmp_path / "broken.parquet"
    pq.write_bytes(b"this is not parquet at all")
    msg = _error(load_tabular, pq, label_column="y")
    assert "broken.parquet" in msg and "Parquet" in msg


def test_too_few_rows_for_split(tmp_path: Path):
    msg = _tabular_error(tmp_path, "a,y\n1,0\n2,1\n", name="tiny.csv")
    assert "tiny.csv" in msg and "2 rows" in msg
    with pytest.raises(ConfigError, match="val_fraction"):
        load_tabular(tmp_path / "tiny.csv", label_column="y", val_fraction=1.5)


# --- image folders ---------------------------------------------------------------------------------


def test_unreadable_image(image_folder: Path):
    bad = image_folder / "square" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    msg = _error(load_image_folder, image_folder)
    assert "square/broken.png" in msg and str(bad) in msg and "cannot read" in msg


def test_missized_image(image_folder: Path, png):
    png(image_folder / "square" / "odd.png", np.zeros((7, 4)))
    msg = _error(load_image_folder, image_folder)
    assert "square/odd.png" in msg and "7x4" in msg and "6x4" in msg and "image_size=(6, 4)" in msg
    s = load_image_folder(image_folder, image_size=(6, 4))  # the suggested fix works
    assert s.train.input_shape == (1, 6, 4)


def test_bad_folder_layouts(tmp_path: Path, png):
    root = tmp_path / "one_class"
    png(root / "only" / "a.png", np.zeros((3, 3)))
    msg = _error(load_image_folder, root)
    assert "one_class" in msg and "at least two" in msg
    png(root / "other" / "b.png", np.zeros((3, 3)))
    (root / "empty").mkdir()
    msg = _error(load_image_folder, root)
    assert "empty/" in msg and "no images" in msg
    msg = _error(load_image_folder, root / "only" / "a.png")
    assert "a.png" in msg and "folder" in msg
    with pytest.raises(ConfigError, match="image_size"):
        load_image_folder(root, image_size=(0, 3))
