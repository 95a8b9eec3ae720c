"""DatasetSpec (validation, JSON round trip) and load_dataset (dispatch, noise, caching)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tda_explorer.data import (
    BUILTIN_DATASETS,
    DATASET_NAMES,
    DatasetSpec,
    clear_cache,
    inject_label_noise,
    load_dataset,
    load_digits_splits,
    load_mnist5k,
    load_tabular,
)
from tda_explorer.errors import ConfigError


def test_names():
    assert BUILTIN_DATASETS == ("mnist5k", "digits", "sst2")
    assert set(DATASET_NAMES) == {"mnist5k", "digits", "sst2", "tabular", "text", "images"}


def test_unknown_name_lists_the_names():
    with pytest.raises(ConfigError) as e:
        DatasetSpec("mnist")
    for name in DATASET_NAMES:
        assert name in str(e.value)


def test_to_dict_is_canonical_and_round_trips():
    spec = DatasetSpec("sst2", options={"n_train": 100}, noise_fraction=0.1, noise_seed=3, split_seed=2)
    d = spec.to_dict()
    assert set(d) == {"name", "path", "options", "noise_fraction", "noise_seed", "split_seed"}
    assert d["options"] == {"min_words": 8, "n_train": 100, "n_val": 200, "n_test": 300}  # defaults filled in
    assert json.loads(json.dumps(d)) == d
    assert DatasetSpec.from_dict(d) == spec and DatasetSpec.from_dict(json.loads(spec.key())) == spec
    assert hash(spec) == hash(DatasetSpec.from_dict(d))
    d["options"]["n_train"] = 5  # to_dict hands out a copy
    assert spec.options["n_train"] == 100
    img = DatasetSpec("images", path="x", options={"image_size": (8, 8)})
    assert img.to_dict()["options"]["image_size"] == [8, 8]  # JSON form


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "digits", "options": {"n_vall": 3}}, "n_vall.*n_test, n_val"),
        ({"name": "digits", "options": {"seed": 3}}, "split_seed"),
        ({"name": "tabular", "path": "a.csv", "options": {"labelcolumn": "y"}}, "labelcolumn.*label_column"),
        ({"name": "tabular", "options": {"label_column": "y"}}, "path"),
        ({"name": "mnist5k", "path": "x"}, "no path"),
        ({"name": "digits", "noise_fraction": 1.0}, "noise_fraction"),
        ({"name": "digits", "split_seed": -1}, "split_seed"),
        ({"name": "digits", "options": {"n_val": object()}}, "JSON"),
    ],
)
def test_spec_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DatasetSpec(**kwargs)


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="colour"):
        DatasetSpec.from_dict({"name": "digits", "colour": "red"})


def test_load_builtin_matches_loader_and_is_cached():
    spec = DatasetSpec("mnist5k", split_seed=1)
    a = load_dataset(spec)
    assert a.spec == spec.to_dict()
    direct = load_mnist5k(seed=1)
    assert a.train.ids == direct.train.ids and torch.equal(a.test.inputs, direct.test.inputs)
    assert direct.spec == a.spec  # loaders and registry describe data the same way
    t0 = time.perf_counter()
    b = load_dataset(spec)
    assert time.perf_counter() - t0 < 0.5
    assert b.train.ids == a.train.ids and b.train.inputs is a.train.inputs  # tensors shared
    a.spec["name"] = "changed"
    a.train.meta["x"] = 1
    c = load_dataset(spec)
    assert c.spec["name"] == "mnist5k" and "x" not in c.train.meta  # dicts are not


def test_load_with_noise():
    spec = DatasetSpec("digits", options={"n_val": 100}, noise_fraction=0.2, noise_seed=5)
    s = load_dataset(spec)
    clean = load_digits_splits(n_val=100)
    assert len(s.flipped_ids) == round(0.2 * len(clean.train))
    pos = clean.train.index_of(s.flipped_ids)
    assert torch.all(s.train.labels[pos] != clean.train.labels[pos])
    assert s.spec == {**spec.to_dict(), "noise": {"fraction": 0.2, "seed": 5}}
    assert DatasetSpec.from_dict(s.spec) == spec
    s.original_labels.clear()
    assert len(load_dataset(spec).original_labels) == len(s.flipped_ids)


def test_load_user_table_and_reload_after_edit(tmp_path: Path, table_df: pd.DataFrame):
    path = tmp_path / "animals.csv"
    table_df.to_csv(path, index=False)
    spec = DatasetSpec(
        "tabular", path=str(path), options={"label_column": "label", "id_column": "uid", "standardize": False}
    )
    a = load_dataset(spec)
    direct = load_tabular(path, "label", id_column="uid", standardize=False)
    assert a.train.ids == direct.train.ids and torch.equal(a.train.inputs, direct.train.inputs)
    assert a.spec == {
        **spec.to_dict(),
        "fingerprint": direct.spec["fingerprint"],
        "columns": direct.spec["columns"],
    }
    table_df.assign(height=table_df["height"] + 1).to_csv(path, index=False)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime, even on coarse clocks
    b = load_dataset(spec)
    assert b.spec["fingerprint"] != a.spec["fingerprint"]
    assert torch.allclose(b.train.inputs[:, 0], a.train.inputs[:, 0] + 1)


def test_load_text_and_images(tmp_path: Path, text_df: pd.DataFrame, image_folder: Path):
    path = tmp_path / "reviews.parquet"
    text_df.to_parquet(path, index=False)
    opts = {"text_column": "text", "label_column": "stars", "test_fraction": 0.2}
    s = load_dataset(DatasetSpec("text", path=str(path), options=opts, split_seed=3))
    assert s.train.kind == "text" and len(s.test) == 6 and s.spec["split_seed"] == 3
    img = load_dataset(DatasetSpec("images", path=str(image_folder), options={"image_size": [3, 2]}))
    assert img.train.input_shape == (1, 3, 2)


def test_load_sst2_spec(sst2_path: Path):
    spec = DatasetSpec("sst2", path=str(sst2_path), options={"n_train": 300, "n_val": 30, "n_test": 40})
    s = load_dataset(spec)
    assert (len(s.train), len(s.val), len(s.test)) == (300, 30, 40)
    assert set(s.spec) == {*spec.to_dict(), "fingerprint"}


def test_load_dataset_needs_a_spec():
    with pytest.raises(ConfigError, match="DatasetSpec"):
        load_dataset({"name": "digits"})
    clear_cache()
    assert len(load_dataset(DatasetSpec("digits")).train) == 1297


def test_noisy_spec_reloads_to_the_same_noisy_data():
    """A run stores `splits.spec`; reloading it through DatasetSpec must give the same flips."""
    noisy = inject_label_noise(load_dataset(DatasetSpec("digits")), 0.15, seed=9)
    again = load_dataset(DatasetSpec.from_dict(json.loads(json.dumps(noisy.spec))))
    assert again.spec == noisy.spec
    assert again.flipped_ids == noisy.flipped_ids and torch.equal(again.train.labels, noisy.train.labels)
    assert again.original_labels == noisy.original_labels
