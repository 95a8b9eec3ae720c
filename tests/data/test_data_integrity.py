"""Issue 20, items 1-9 and 15 (symlinks): what the user gives is what the loaders keep.

Each test reproduces an audited failure (it failed before the fix) and checks the fixed behaviour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tda_explorer.data import DatasetSplits, load_image_folder, load_tabular, load_text_table
from tda_explorer.errors import ConfigError, DataError


def _all(s: DatasetSplits) -> dict[str, tuple]:
    """id -> (input, class name) over the three splits."""
    out = {}
    for part in (s.train, s.val, s.test):
        for k, i in enumerate(part.ids):
            out[i] = (part.inputs[k], part.class_names[int(part.labels[k])])
    return out


# --- 1. ids verbatim ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".csv", ".tsv"])
def test_ids_are_kept_verbatim(tmp_path: Path, ext: str) -> None:
    sep = "," if ext == ".csv" else "\t"
    ids = ["00000", "1.0", "007", "1e5", "-0", "3.50"]
    path = tmp_path / f"ids{ext}"
    path.write_text(
        "\n".join([sep.join(["id", "x", "text", "y"])] + [sep.join([k, str(i), f"t{i}", str(i % 2)]) for i, k in enumerate(ids)]),
        encoding="utf-8",
    )  # fmt: skip
    tab = load_tabular(path, "y", ["x"], id_column="id", val_fraction=0.0, test_fraction=0.0)
    assert tab.train.ids == tuple(ids)
    txt = load_text_table(path, "text", "y", id_column="id", val_fraction=0.0, test_fraction=0.0)
    assert txt.train.ids == tuple(ids)


# --- 2. texts verbatim -------------------------------------------------------------------------------


def test_numeric_looking_texts_are_kept_verbatim(tmp_path: Path) -> None:
    texts = ["007", "1e5", "3.50", "-0", "10", "1.0"]  # all numeric-looking: pandas made floats of them
    path = tmp_path / "nums.csv"
    path.write_text("text,y\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(texts)), encoding="utf-8")
    s = load_text_table(path, "text", "y", val_fraction=0.0, test_fraction=0.0)
    assert s.train.inputs == tuple(texts)


# --- 3. missing-value spellings are data ------------------------------------------------------------


def test_missing_value_spellings_are_labels_and_texts(tmp_path: Path) -> None:
    words = ["NA", "null", "None", "NaN", "n/a", "N/A"]
    path = tmp_path / "na.tsv"
    path.write_text("text\ty\n" + "".join(f"{w}\t{w}\n" for w in words), encoding="utf-8")
    s = load_text_table(path, "text", "y", val_fraction=0.0, test_fraction=0.0)
    assert s.train.inputs == tuple(words)
    assert [s.train.class_names[y] for y in s.train.labels.tolist()] == words
    path = tmp_path / "na.csv"
    path.write_text("x,y\n" + "".join(f"{i},{w}\n" for i, w in enumerate(words)), encoding="utf-8")
    t = load_tabular(path, "y", val_fraction=0.0, test_fraction=0.0)
    assert sorted(t.train.class_names) == sorted(words)


# --- 4. labels as the user's strings ---------------------------------------------------------------


def test_zero_padded_labels_stay_distinct(tmp_path: Path) -> None:
    path = tmp_path / "pad.csv"
    path.write_text(
        "x,y\n" + "".join(f"{i},{('01', '1', '001')[i % 3]}\n" for i in range(9)), encoding="utf-8"
    )
    s = load_tabular(path, "y", val_fraction=0.0, test_fraction=0.0)
    assert s.train.class_names == ("001", "01", "1")  # strings: two spellings of one number
    path.write_text("x,y\n" + "".join(f"{i},{('01', '01')[i % 2]}\n" for i in range(4)), encoding="utf-8")
    with pytest.raises(DataError, match="single class"):
        load_tabular(path, "y", val_fraction=0.0, test_fraction=0.0)


def test_numeric_labels_sort_by_value_and_keep_spelling(tmp_path: Path) -> None:
    path = tmp_path / "num.csv"
    path.write_text(
        "x,y\n" + "".join(f"{i},{('10', '2', '007')[i % 3]}\n" for i in range(9)), encoding="utf-8"
    )
    s = load_tabular(path, "y", val_fraction=0.0, test_fraction=0.0)
    assert s.train.class_names == ("2", "007", "10")


def test_parquet_int_labels_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0, 4.0], "y": [10, 2, 10, 2]}), path)
    s = load_tabular(path, "y", val_fraction=0.0, test_fraction=0.0)
    assert s.train.class_names == ("2", "10")


# --- 5. duplicate headers --------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".csv", ".tsv"])
def test_duplicate_headers_are_refused(tmp_path: Path, ext: str) -> None:
    sep = "," if ext == ".csv" else "\t"
    path = tmp_path / f"dup{ext}"
    path.write_text(sep.join("a b label label".split()) + "\n" + "".join(sep.join(["1", "2", "0", str(i % 2)]) + "\n" for i in range(6)))  # fmt: skip
    with pytest.raises(DataError, match=r"dup\S*: the header names the column\(s\) 'label' more than once"):
        load_tabular(path, "label")
    with pytest.raises(DataError, match="'label'"):
        load_text_table(path, "a", "label")


# --- 6. bit depth and size bounds ------------------------------------------------------------------


def _gradient_folder(root: Path, arrays: dict[str, np.ndarray], fmt: str) -> None:
    for k, (name, a) in enumerate(arrays.items()):
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / f"c{k % 2}" / f"{name}.{fmt}")


def test_16bit_png_is_scaled_by_65535(tmp_path: Path) -> None:
    a = (np.arange(4 * 6).reshape(4, 6) * 2800).astype(np.uint16)
    _gradient_folder(tmp_path, {"a": a, "b": a[::-1].copy(), "c": a, "d": a}, "png")
    s = load_image_folder(tmp_path, val_fraction=0.0, test_fraction=0.0)
    x = dict(zip(s.train.ids, s.train.inputs, strict=True))
    assert s.train.input_shape == (1, 4, 6)
    assert torch.allclose(x["c0/a.png"][0], torch.from_numpy(a / 65535.0).float())
    assert torch.allclose(x["c1/b.png"][0], torch.from_numpy(a[::-1] / 65535.0).float())


def test_int32_and_float_tiffs(tmp_path: Path) -> None:
    a = (np.arange(12).reshape(3, 4) * 100000).astype(np.int32)
    _gradient_folder(tmp_path / "i", {"a": a, "b": a + 7}, "tif")
    s = load_image_folder(tmp_path / "i", val_fraction=0.0, test_fraction=0.0)
    x = dict(zip(s.train.ids, s.train.inputs, strict=True))
    assert torch.allclose(x["c0/a.tif"][0], torch.from_numpy(a / (2**31 - 1)).float())
    assert len(set(x["c0/a.tif"][0].flatten().tolist())) == 12  # a gradient stays a gradient
    f = (np.arange(12).reshape(3, 4) / 11.0).astype(np.float32)
    _gradient_folder(tmp_path / "f", {"a": f, "b": 1 - f}, "tif")
    s = load_image_folder(tmp_path / "f", val_fraction=0.0, test_fraction=0.0)
    x = dict(zip(s.train.ids, s.train.inputs, strict=True))
    assert torch.equal(x["c0/a.tif"][0], torch.from_numpy(f))
    resized = load_image_folder(
        tmp_path / "f", image_size=(6, 8), grayscale=False, val_fraction=0.0, test_fraction=0.0
    )
    assert resized.train.input_shape == (3, 6, 8) and 0.0 < float(resized.train.inputs.mean()) < 1.0
    _gradient_folder(tmp_path / "g", {"a": f * 300, "b": f}, "tif")
    with pytest.raises(DataError, match=r"c0/a.tif: float image with values in \[0, 300\]; .*rescale"):
        load_image_folder(tmp_path / "g")
    _gradient_folder(tmp_path / "n", {"a": a - 50, "b": a}, "tif")
    with pytest.raises(DataError, match="c0/a.tif: 32-bit integer image with negative values"):
        load_image_folder(tmp_path / "n")


def test_huge_image_size_is_refused_without_memory_error(image_folder: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"image_size=\(30000, 30000\) is over the limit of 4096"):
        load_image_folder(image_folder, image_size=[30000, 30000])
    from tda_explorer.data import images

    monkeypatch.setattr(images, "MAX_TOTAL_VALUES", 10 * 6 * 4 - 1)  # one value short for 10 6x4 images
    with pytest.raises(DataError, match=r"shapes: 10 images of 1x6x4 .* pass a smaller image_size"):
        load_image_folder(image_folder)


# --- 7. parquet types ------------------------------------------------------------------------------


def _pq(tmp_path: Path, name: str, **columns) -> Path:
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_pandas_index_is_not_a_feature(tmp_path: Path) -> None:
    import pandas as pd

    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]}, index=[10, 20, 30, 40])
    df.to_parquet(tmp_path / "idx.parquet")  # unnamed non-range index: stored as __index_level_0__
    s = load_tabular(tmp_path / "idx.parquet", "y", val_fraction=0.0, test_fraction=0.0)
    assert s.train.meta["feature_names"] == ["x"]
    df.rename_axis("uid").to_parquet(tmp_path / "named.parquet")  # a named index is a column
    s = load_tabular(
        tmp_path / "named.parquet", "y", ["x"], id_column="uid", val_fraction=0.0, test_fraction=0.0
    )
    assert s.train.ids == ("10", "20", "30", "40")


def test_csv_row_index_is_not_a_default_feature(tmp_path: Path) -> None:
    import pandas as pd

    df = pd.DataFrame({"x": [3.0, 1.0, 2.0, 5.0], "y": [0, 0, 1, 1]})
    df.to_csv(tmp_path / "indexed.csv")  # index=True: an unnamed first column 0, 1, 2, 3 (sorted by class)
    s = load_tabular(tmp_path / "indexed.csv", "y", val_fraction=0.0, test_fraction=0.0)
    assert s.train.meta["feature_names"] == ["x"]
    s = load_tabular(tmp_path / "indexed.csv", "y", ["Unnamed: 0", "x"], val_fraction=0.0, test_fraction=0.0)
    assert s.train.meta["feature_names"] == ["Unnamed: 0", "x"]


def test_parquet_binary_text_is_decoded_or_refused(tmp_path: Path) -> None:
    good = [b"good film", b"bad film", "caf\u00e9".encode(), b"ok"]
    path = _pq(tmp_path, "bin.parquet", text=pa.array(good, pa.binary()), y=["a", "b", "a", "b"])
    s = load_text_table(path, "text", "y", val_fraction=0.0, test_fraction=0.0)
    assert s.train.inputs == ("good film", "bad film", "caf\u00e9", "ok")
    path = _pq(tmp_path, "latin.parquet", text=pa.array([b"ok", b"caf\xe9"], pa.binary()), y=["a", "b"])
    with pytest.raises(
        DataError, match=r"latin.parquet: text column 'text' holds bytes that are not UTF-8 text at row 1"
    ):
        load_text_table(path, "text", "y", val_fraction=0.0, test_fraction=0.0)


@pytest.mark.parametrize(
    "column",
    [
        pa.array([["a"], ["b"], ["c"], ["d"]]),
        pa.array([{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}]),
        pa.array(np.arange(4).astype("datetime64[s]")),
        pa.array(np.arange(4).astype("timedelta64[s]")),
    ],
    ids=["list", "struct", "timestamp", "duration"],
)
def test_parquet_nested_and_time_columns_are_refused(tmp_path: Path, column: pa.Array) -> None:
    path = _pq(
        tmp_path, "typed.parquet", x=[1.0, 2.0, 3.0, 4.0], z=column, t=["p", "q", "r", "s"], y=[0, 1, 0, 1]
    )
    with pytest.raises(DataError, match=rf"typed.parquet: feature column .z. holds {str(column.type)[:4]}"):
        load_tabular(path, "y", val_fraction=0.0, test_fraction=0.0, id_column="t")
    with pytest.raises(DataError, match=r"text column 'z' holds"):
        load_text_table(path, "z", "y")
    s = load_tabular(path, "y", feature_columns=["x"], val_fraction=0.0, test_fraction=0.0)  # unused: fine
    assert s.train.input_shape == (1,)


# --- 8. CLI data options typed by the loader -------------------------------------------------------


def test_cli_data_options_are_typed_by_the_loader() -> None:
    from tda_explorer.data.registry import parse_options

    opts = parse_options("tabular", {"feature_columns": "5", "label_column": "123", "id_column": ""})
    assert opts == {"feature_columns": ["5"], "label_column": "123", "id_column": None}
    assert parse_options("tabular", {"feature_columns": "a, b", "standardize": "false"}) == {
        "feature_columns": ["a", "b"],
        "standardize": False,
    }
    assert parse_options("tabular", {"feature_columns": '["a,b", "c"]'})["feature_columns"] == ["a,b", "c"]
    assert parse_options("images", {"image_size": "64,32"})["image_size"] == [64, 32]
    assert parse_options("images", {"image_size": "64x32", "grayscale": ""}) == {
        "image_size": [64, 32],
        "grayscale": None,
    }
    assert parse_options("text", {"val_fraction": "0.2", "header": "false"}) == {
        "val_fraction": 0.2,
        "header": False,
    }
    for name, key, value, expected in [
        ("tabular", "val_fraction", "lots", "val_fraction expects a number"),
        ("tabular", "standardize", "maybe", "standardize expects true or false"),
        ("images", "image_size", "64", "image_size expects two integers"),
        ("tabular", "categorical", "drop", "categorical expects one of 'onehot', 'error'"),
        ("sst2", "n_train", "many", "n_train expects an integer"),
    ]:
        with pytest.raises(ConfigError, match=expected):
            parse_options(name, {key: value})
    with pytest.raises(ConfigError, match="--split-seed"):
        parse_options("tabular", {"seed": "3"})


def test_non_string_column_names_are_a_config_error(table_csv: Path) -> None:
    with pytest.raises(
        ConfigError, match="label_column must be a column name \\(a string\\), got the int 123; pass '123'"
    ):
        load_tabular(table_csv, label_column=123)


def test_cli_label_column_named_123(tmp_path: Path, capsys) -> None:
    from tda_explorer.cli import main

    path = tmp_path / "t.csv"
    path.write_text("5,123\n" + "".join(f"{i % 7},{i % 2}\n" for i in range(40)), encoding="utf-8")
    argv = ["--workspace", str(tmp_path / "ws"), "train", "--dataset", "tabular", "--path", str(path),
            "--data-option", "label_column=123", "--data-option", "feature_columns=5", "--model", "logreg",
            "--epochs", "1", "--workers", "1", "--split-seed", "2"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert main(["--workspace", str(tmp_path / "ws"), "runs"]) == 0
    assert "tabular t.csv (label=123, 1 feature)" in capsys.readouterr().out
    assert main([*argv[:-2], "--data-option", "val_fraction=lots"]) == 2
    assert "val_fraction expects a number" in capsys.readouterr().err


# --- 9 / 15. symlinks leaving an image folder ------------------------------------------------------


def test_symlinks_leaving_the_folder_are_refused(tmp_path: Path, image_folder: Path, png) -> None:
    outside = png(tmp_path / "elsewhere" / "secret.png", np.zeros((6, 4)))
    link = image_folder / "circle" / "link.png"
    link.symlink_to(outside)
    with pytest.raises(
        DataError,
        match=r"circle/link.png: is a symbolic link to .*secret.png, outside the image folder.*follow_symlinks=True",
    ):
        load_image_folder(image_folder)
    s = load_image_folder(image_folder, follow_symlinks=True)
    assert "circle/link.png" in s.train.ids + s.val.ids + s.test.ids
    link.unlink()
    (image_folder / "triangle").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(DataError, match=r"triangle: is a symbolic link to .*elsewhere, outside"):
        load_image_folder(image_folder)
    (image_folder / "triangle").unlink()
    (image_folder / "square" / "inner.png").symlink_to(image_folder / "circle" / "img0.png")  # stays inside
    assert len(load_image_folder(image_folder, val_fraction=0.0, test_fraction=0.0).train) == 11


# --- 13. the split-seed message names an option that exists ----------------------------------------


def test_split_seed_message_names_real_options() -> None:
    from tda_explorer.data import DatasetSpec

    with pytest.raises(
        ConfigError, match=r"DatasetSpec\(split_seed=\.\.\., path=\.\.\.\), or --split-seed / --path"
    ):
        DatasetSpec("digits", options={"seed": 3})


def test_headerless_tsv_corpus(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"  # .txt is read as tab-separated (uploads accept it too)
    lines = [f'{("pos", "neg")[i % 2]}\tmessage {i} with "quotes", commas' for i in range(10)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = load_text_table(
        path, text_column="1", label_column="0", header=False, val_fraction=0.0, test_fraction=0.0
    )
    assert s.train.inputs == tuple(line.split("\t")[1] for line in lines)
    assert s.train.ids[0] == "corpus-0" and s.train.class_names == ("neg", "pos")
    named = load_text_table(path, "text", "label", header=False, column_names=["label", "text"], val_fraction=0.0, test_fraction=0.0)  # fmt: skip
    assert named.train.inputs == s.train.inputs
    with pytest.raises(DataError, match="column_names gives 3 name"):
        load_text_table(path, "text", "label", header=False, column_names=["label", "text", "x"])
    with pytest.raises(ConfigError, match="also pass header=False"):
        load_text_table(path, "text", "label", column_names=["label", "text"])
