"""Issue 16 item 6: user tables that train well (standardised on train, one-hot, stratified, the user's
split kept) and a preview of what was loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tda_explorer.data import (
    DatasetSpec,
    TablePreprocessor,
    describe_spec,
    describe_splits,
    load_dataset,
    load_tabular,
    load_text_table,
)
from tda_explorer.errors import DataError


def _table(tmp_path: Path, df: pd.DataFrame, name: str = "t.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """60 rows: a large-scale numeric column, a bool, a categorical colour, 3 classes of 20."""
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(60)],
            "proline": rng.normal(700, 300, 60).round(2),
            "flag": rng.random(60) < 0.5,
            "colour": [("red", "green", "blue", "NA")[i % 4] for i in range(60)],
            "label": [("a", "b", "c")[i % 3] for i in range(60)],
        }
    )
    return _table(tmp_path, df, "mixed.csv"), df


def test_numeric_features_standardised_with_train_statistics(mixed) -> None:
    path, df = mixed
    s = load_tabular(path, id_column="id", val_fraction=0.2, test_fraction=0.2)
    names = s.train.meta["feature_names"]
    assert names == ["proline", "flag", "colour=NA", "colour=blue", "colour=green", "colour=red"]
    x = s.train.inputs.double()
    assert torch.allclose(x[:, :2].mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(x[:, :2].std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-5)
    pre = s.train.meta["preprocessing"]
    train_rows = df.set_index("id").loc[list(s.train.ids)]
    assert pre["mean"]["proline"] == pytest.approx(train_rows["proline"].mean())
    assert pre["std"]["proline"] == pytest.approx(train_rows["proline"].std(ddof=0))
    # val / test use the train statistics; the stored preprocessing reproduces every split from raw rows
    again = TablePreprocessor.from_dict(pre)
    for part in (s.train, s.val, s.test):
        rows = df.set_index("id").loc[list(part.ids)].reset_index()
        assert torch.allclose(again.transform_frame(rows), part.inputs, atol=1e-6)
    raw = load_tabular(path, id_column="id", standardize=False, val_fraction=0.2, test_fraction=0.2)
    assert raw.train.meta["preprocessing"]["mean"]["proline"] == 0.0
    by_id = dict(zip(raw.train.ids, raw.train.inputs[:, 0].tolist(), strict=True))
    assert by_id["r0"] == pytest.approx(float(df.loc[0, "proline"]), rel=1e-6)


def test_categorical_vocabulary_from_train_and_unknowns(tmp_path: Path) -> None:
    split = ["train"] * 8 + ["val", "test"]
    colour = ["red", "blue"] * 4 + ["purple", "red"]
    df = pd.DataFrame({"x": range(10), "colour": colour, "split": split, "label": [0, 1] * 5})
    s = load_tabular(_table(tmp_path, df), split_column="split")
    assert s.train.meta["preprocessing"]["vocab"] == {"colour": ["blue", "red"]}
    assert s.val.inputs[0, 1:].tolist() == [0.0, 0.0]  # "purple" was never seen in train: all zeros
    assert s.test.inputs[0, 1:].tolist() == [0.0, 1.0]
    with pytest.raises(DataError, match=r"t.csv: feature column 'colour' holds text .*categorical='error'"):
        load_tabular(_table(tmp_path, df), split_column="split", categorical="error")


def test_typos_and_identifiers_are_not_categories(tmp_path: Path) -> None:
    df = pd.DataFrame({"x": ["1", "2", "3", "4x"], "label": [0, 1, 0, 1]})
    with pytest.raises(
        DataError, match=r"feature column 'x' is not numeric: row 3 \(line 5\) has value '4x'"
    ):
        load_tabular(_table(tmp_path, df), val_fraction=0.0, test_fraction=0.0)
    df = pd.DataFrame({"x": [1, 2, 3, 4], "name": ["ann", "bob", "cy", "di"], "label": [0, 1, 0, 1]})
    with pytest.raises(DataError, match="feature column 'name' holds text that looks like an identifier"):
        load_tabular(_table(tmp_path, df), val_fraction=0.0, test_fraction=0.0)


def test_splits_are_stratified_by_default(tmp_path: Path) -> None:
    # wine-like class sizes: 59 / 71 / 48; the audit found validation counts 2 / 12 / 4 unstratified
    labels = [0] * 59 + [1] * 71 + [2] * 48
    df = pd.DataFrame({"x": np.arange(178.0), "label": labels})
    s = load_tabular(_table(tmp_path, df))
    counts = describe_splits(s)["class_counts"]
    assert counts["val"] == {"0": 6, "1": 7, "2": 5} and counts["test"] == {"0": 6, "1": 7, "2": 5}
    assert (len(s.val), len(s.test)) == (18, 18)  # the same sizes as the unstratified split
    tiny = pd.DataFrame({"x": np.arange(12.0), "label": [0] * 9 + [1] * 3})
    t = load_tabular(_table(tmp_path, tiny, "tiny.csv"), val_fraction=0.2, test_fraction=0.2)
    for part in (t.train, t.val, t.test):
        assert set(part.labels.tolist()) == {0, 1}  # every class in every split
    plain = load_tabular(_table(tmp_path, df), stratify=False)
    assert plain.val.ids != s.val.ids


@pytest.mark.parametrize("loader", ["tabular", "text"])
def test_split_column_round_trips_exactly(tmp_path: Path, loader: str) -> None:
    rng = np.random.default_rng(3)
    marks = rng.choice(["train", "val", "test", "Train "], size=40).tolist()
    df = pd.DataFrame({"id": [f"{i:03d}" for i in range(40)], "x": rng.normal(size=40), "text": [f"t{i}" for i in range(40)],
                       "where": marks, "label": [i % 3 for i in range(40)]})  # fmt: skip
    path = _table(tmp_path, df)
    if loader == "tabular":
        s = load_tabular(path, feature_columns=["x"], id_column="id", split_column="where")
    else:
        s = load_text_table(path, id_column="id", split_column="where")
    for part, name in ((s.train, "train"), (s.val, "val"), (s.test, "test")):
        expected = tuple(df["id"][[m.strip().lower() == name for m in marks]])
        assert part.ids == expected  # the user's rows, in file order
    bad = df.assign(where=marks[:5] + ["validation"] + marks[6:])
    with pytest.raises(
        DataError, match=r"t.csv: split column 'where' has the value 'validation' at row 5 \(line 7\)"
    ):
        load_tabular(_table(tmp_path, bad), feature_columns=["x"], split_column="where")
    none = df.assign(where="test")
    with pytest.raises(DataError, match="marks no row as train"):
        load_tabular(_table(tmp_path, none), feature_columns=["x"], split_column="where")


def test_describe_splits_and_spec(mixed) -> None:
    path, _ = mixed
    spec = DatasetSpec("tabular", str(path), {"id_column": "id"})
    s = load_dataset(spec)
    d = describe_splits(s)
    assert d["rows"] == {"train": 48, "val": 6, "test": 6} and d["kind"] == "tabular"
    assert d["source"] == "mixed.csv" and d["classes"] == ["a", "b", "c"]
    assert d["columns"] == {
        "label": "label",
        "id": "id",
        "split": None,
        "features": ["proline", "flag", "colour"],
    }
    assert sum(sum(c.values()) for c in d["class_counts"].values()) == 60
    assert d["inputs"][0] == "proline" and d["preprocessing"]["standardize"] is True
    assert describe_spec(s.spec) == "tabular mixed.csv (label=label, 3 features)"
    assert describe_spec({"name": "digits", "path": None}) == "digits"
    assert describe_spec({"name": "sst2", "path": "/data/sst2", "options": {"n_train": 10}}) == "sst2"
    assert describe_spec({"name": "images", "path": "/data/shapes"}) == "images shapes/"
    text = {"name": "text", "path": "/d/corpus.tsv", "options": {"text_column": "1", "label_column": "0"}}
    assert describe_spec(text) == "text corpus.tsv (text=1, label=0)"
    assert len(describe_spec({**text, "path": "/d/" + "x" * 100 + ".tsv"})) == 60


def _sklearn_csv(tmp_path: Path, name: str) -> Path:
    from sklearn import datasets

    frame = getattr(datasets, f"load_{name}")(as_frame=True).frame.rename(columns={"target": "label"})
    return _table(tmp_path, frame, f"{name}.csv")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wine", "breast_cancer"])
def test_sklearn_tables_train_well_through_the_cli(tmp_path: Path, name: str, capsys) -> None:
    """Acceptance (issue 16): the default MLP reaches test accuracy >= 0.90 on both tables."""
    from tda_explorer.cli import main

    path = _sklearn_csv(tmp_path, name)
    argv = ["--workspace", str(tmp_path / "ws"), "train", "--dataset", "tabular", "--path", str(path),
            "--model", "mlp", "--seeds", "1", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    acc = float(out.split("mean test accuracy")[1].split()[0])
    assert acc >= 0.90, out


def test_describe_splits_of_builtin_and_regression_sets() -> None:
    from tda_explorer.data import DatasetSplits, ExampleSet

    d = describe_splits(load_dataset(DatasetSpec("digits")))
    assert d["source"] == "digits" and d["inputs"] == [1, 8, 8] and d["columns"] == {}
    assert sum(d["class_counts"]["train"].values()) == d["rows"]["train"]
    reg = ExampleSet(("a", "b"), torch.zeros(2, 3), torch.tensor([0.5, 1.5]), (), "tabular")
    d = describe_splits(DatasetSplits(reg, reg.subset([0]), reg.subset([1]), {"name": "tabular"}))
    assert d["class_counts"] == {"train": {}, "val": {}, "test": {}} and d["rows"]["train"] == 2
