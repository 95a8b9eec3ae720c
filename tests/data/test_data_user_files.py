"""User files that are fine: tables (CSV / TSV / Parquet) and image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tda_explorer.data import DatasetSplits, load_image_folder, load_tabular, load_text_table


def _ids(s: DatasetSplits) -> list[str]:
    return [*s.train.ids, *s.val.ids, *s.test.ids]


def _by_id(s: DatasetSplits) -> dict[str, tuple]:
    out = {}
    for part in (s.train, s.val, s.test):
        for k, i in enumerate(part.ids):
            out[i] = (part.inputs[k], int(part.labels[k]))
    return out


def test_tabular_default_features_exclude_label_and_id(table_csv: Path, table_df: pd.DataFrame):
    s = load_tabular(table_csv, label_column="label", id_column="uid", standardize=False)
    assert (len(s.train), len(s.val), len(s.test)) == (40, 5, 5)
    assert s.train.kind == "tabular" and s.train.class_names == ("bird", "cat", "dog")
    assert s.train.meta["feature_names"] == ["height", "weight", "smoker"]
    assert set(_ids(s)) == set(table_df["uid"])
    rows = _by_id(s)
    for r in table_df.itertuples():
        x, y = rows[r.uid]
        assert x.dtype == torch.float32
        # raw values, not standardised
        assert torch.allclose(x, torch.tensor([r.height, r.weight, float(r.smoker)], dtype=torch.float32))
        assert s.train.class_names[y] == r.label


def test_tabular_ids_from_rows_feature_subset_and_seed(table_csv: Path):
    s = load_tabular(table_csv, label_column="label", feature_columns=["weight"], seed=0)
    assert set(_ids(s)) == {f"animals-{i}" for i in range(50)}
    assert s.train.input_shape == (1,)
    again = load_tabular(table_csv, label_column="label", feature_columns=["weight"], seed=0)
    other = load_tabular(table_csv, label_column="label", feature_columns=["weight"], seed=1)
    assert s.test.ids == again.test.ids and s.test.ids != other.test.ids
    assert not set(s.train.ids) & set(s.val.ids) and not set(s.val.ids) & set(s.test.ids)
    assert s.spec["options"]["feature_columns"] == ["weight"] and s.spec["split_seed"] == 0


def test_tabular_parquet_matches_csv(tmp_path: Path, table_df: pd.DataFrame, table_csv: Path):
    for ext in (".parquet", ".pq"):
        pq = tmp_path / f"animals{ext}"
        table_df.to_parquet(pq, index=False)
        a = load_tabular(pq, label_column="label", id_column="uid")
        b = load_tabular(table_csv, label_column="label", id_column="uid")
        assert a.train.ids == b.train.ids
        assert torch.allclose(a.train.inputs, b.train.inputs)
        assert torch.equal(a.train.labels, b.train.labels)


def test_tabular_int_labels_sort_numerically_and_fractions(tmp_path: Path):
    path = tmp_path / "nums.csv"
    pd.DataFrame({"x": range(20), "y": [10, 3] * 10}).to_csv(path, index=False)
    s = load_tabular(path, label_column="y", val_fraction=0.25, test_fraction=0.0)
    assert s.train.class_names == ("3", "10")
    assert (len(s.train), len(s.val), len(s.test)) == (15, 5, 0)
    for k, i in enumerate(s.train.ids):
        row = int(i.split("-")[1])
        assert int(s.train.labels[k]) == (1 if row % 2 == 0 else 0)


def test_tabular_fingerprint_follows_content(tmp_path: Path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"x": [1, 2, 3, 4, 5], "y": [0, 1, 0, 1, 0]}).to_csv(path, index=False)
    f1 = load_tabular(path, "y", val_fraction=0.2, test_fraction=0.2).spec["fingerprint"]
    pd.DataFrame({"x": [1, 2, 3, 4, 6], "y": [0, 1, 0, 1, 0]}).to_csv(path, index=False)
    assert load_tabular(path, "y", val_fraction=0.2, test_fraction=0.2).spec["fingerprint"] != f1


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".parquet"])
def test_text_table_formats(tmp_path: Path, text_df: pd.DataFrame, ext: str):
    path = tmp_path / f"reviews{ext}"
    if ext == ".parquet":
        text_df.to_parquet(path, index=False)
    elif ext == ".csv":
        text_df.to_csv(path, index=False)
    else:  # GLUE-style TSV: no quoting, quotes are part of the text
        lines = ["id\ttext\tstars"] + [f"{r.id}\t{r.text}\t{r.stars}" for r in text_df.itertuples()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = load_text_table(path, text_column="text", label_column="stars", id_column="id")
    assert (len(s.train), len(s.val), len(s.test)) == (24, 3, 3)
    assert s.train.kind == "text" and s.train.class_names == ("0", "1")
    rows = _by_id(s)
    assert set(rows) == {str(i) for i in text_df["id"]}
    for r in text_df.itertuples():
        assert rows[str(r.id)] == (r.text, r.stars)  # commas, quotes and the word "null" survive
    assert s.spec["name"] == "text" and s.spec["options"]["text_column"] == "text"


def test_text_table_bom_and_default_ids(tmp_path: Path):
    path = tmp_path / "bom.csv"
    path.write_text("text,label\nhello there,pos\ngood bye,neg\nfine day,pos\n", encoding="utf-8-sig")
    s = load_text_table(path, "text", "label", val_fraction=0.0, test_fraction=0.0)
    assert s.train.ids == ("bom-0", "bom-1", "bom-2")
    assert s.train.class_names == ("neg", "pos") and s.train.labels.tolist() == [1, 0, 1]


def test_image_folder_grayscale(image_folder: Path):
    s = load_image_folder(image_folder, val_fraction=0.2, test_fraction=0.2)
    assert (len(s.train), len(s.val), len(s.test)) == (6, 2, 2)
    assert s.train.kind == "image" and s.train.class_names == ("circle", "square")
    assert s.train.inputs.dtype == torch.float32 and s.train.input_shape == (1, 6, 4)
    assert set(_ids(s)) == {f"{c}/img{k}.png" for c in ("circle", "square") for k in range(5)}
    for i, (x, y) in _by_id(s).items():
        c, k = i.split("/")
        assert y == ("circle", "square").index(c)
        assert torch.allclose(x, torch.full((1, 6, 4), (10 * int(k[3]) + y) / 255.0))


def test_image_folder_rgb_resize_and_forced_gray(tmp_path: Path, png):
    root = tmp_path / "mixed"
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    png(root / "red" / "a.png", rgb)
    png(root / "red" / "b.png", rgb)
    png(root / "gray" / "c.png", np.full((8, 8), 128))
    png(root / "gray" / "d.png", np.full((8, 8), 64))
    s = load_image_folder(root, image_size=(4, 4), val_fraction=0.0, test_fraction=0.0)
    assert s.train.input_shape == (3, 4, 4)
    x = dict(zip(s.train.ids, s.train.inputs, strict=True))
    assert torch.allclose(x["red/a.png"][0], torch.ones(4, 4)) and float(x["red/a.png"][1:].abs().max()) == 0
    assert torch.allclose(x["gray/c.png"], torch.full((3, 4, 4), 128 / 255))
    g = load_image_folder(root, image_size=[4, 4], grayscale=True, val_fraction=0.0, test_fraction=0.0)
    assert g.train.input_shape == (1, 4, 4)
    assert float(g.train.inputs.max()) <= 1.0 and float(g.train.inputs.min()) >= 0.0
    assert g.spec["options"]["image_size"] == [4, 4] and g.spec["options"]["grayscale"] is True


def test_image_folder_rgb_when_forced(image_folder: Path):
    s = load_image_folder(image_folder, grayscale=False)
    assert s.train.input_shape == (3, 6, 4)
    assert torch.equal(s.train.inputs[:, 0], s.train.inputs[:, 2])
