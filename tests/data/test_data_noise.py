"""Label-noise injection: exact counts, real flips, seeded, recorded."""

from __future__ import annotations

import math

import pytest
import torch

from tda_explorer.data import DatasetSplits, ExampleSet, inject_label_noise, load_digits_splits
from tda_explorer.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_digits_splits(seed=0)


def _three_class(n: int = 90) -> DatasetSplits:
    def part(prefix: str, m: int) -> ExampleSet:
        return ExampleSet(
            ids=tuple(f"{prefix}{i}" for i in range(m)),
            inputs=torch.zeros(m, 2),
            labels=torch.arange(m) % 3,
            class_names=("a", "b", "c"),
            kind="tabular",
        )

    return DatasetSplits(part("tr", n), part("va", 9), part("te", 9), spec={"name": "toy"})


def test_exact_count_and_every_flip_is_real(digits: DatasetSplits):
    noisy = inject_label_noise(digits, 0.1, seed=0)
    n = len(digits.train)
    assert len(noisy.flipped_ids) == round(0.1 * n) == 130
    pos = digits.train.index_of(noisy.flipped_ids)
    assert list(pos) == sorted(pos)  # in train order
    assert torch.all(noisy.train.labels[pos] != digits.train.labels[pos])
    changed = (noisy.train.labels != digits.train.labels).nonzero().flatten().tolist()
    assert changed == list(pos)  # and nothing else changed
    assert noisy.original_labels == {
        i: int(digits.train.labels[p]) for i, p in zip(noisy.flipped_ids, pos, strict=True)
    }
    assert noisy.train.ids == digits.train.ids and noisy.train.inputs is digits.train.inputs
    assert noisy.val is digits.val and noisy.test is digits.test


def test_original_splits_untouched_and_spec_recorded(digits: DatasetSplits):
    before = digits.train.labels.clone()
    noisy = inject_label_noise(digits, 0.25, seed=4)
    assert torch.equal(digits.train.labels, before) and digits.flipped_ids == ()
    assert noisy.spec["noise"] == {"fraction": 0.25, "seed": 4}
    assert noisy.spec["noise_fraction"] == 0.25 and noisy.spec["noise_seed"] == 4
    assert "noise" not in digits.spec and digits.spec["noise_fraction"] == 0.0


def test_seeded(digits: DatasetSplits):
    a, b, c = (inject_label_noise(digits, 0.2, seed=s) for s in (1, 1, 2))
    assert a.flipped_ids == b.flipped_ids and torch.equal(a.train.labels, b.train.labels)
    assert a.flipped_ids != c.flipped_ids


def test_new_class_is_drawn_among_the_others():
    toy = _three_class(300)
    noisy = inject_label_noise(toy, 0.5, seed=0)
    pos = toy.train.index_of(noisy.flipped_ids)
    old, new = toy.train.labels[pos], noisy.train.labels[pos]
    assert torch.all(old != new)
    for k in range(3):  # both other classes occur, roughly equally often
        counts = torch.bincount(new[old == k], minlength=3)
        assert counts[k] == 0 and counts.min() < counts.max() and int(counts.sort().values[1]) > 10


def test_zero_and_rounding():
    toy = _three_class(90)
    assert inject_label_noise(toy, 0.0, seed=0).flipped_ids == ()
    assert len(inject_label_noise(toy, 0.005, seed=0).flipped_ids) == 0  # round(0.45)
    assert len(inject_label_noise(toy, 0.01, seed=0).flipped_ids) == 1  # round(0.9)


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1, math.nan, "0.1", True])
def test_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="fraction"):
        inject_label_noise(_three_class(), fraction, seed=0)


def test_refuses_double_noise_and_single_class():
    noisy = inject_label_noise(_three_class(), 0.1, seed=0)
    with pytest.raises(ConfigError, match="already"):
        inject_label_noise(noisy, 0.1, seed=1)
    with pytest.raises(ConfigError, match="seed"):
        inject_label_noise(_three_class(), 0.1, seed=-1)
    one = ExampleSet(("a", "b"), torch.zeros(2, 1), torch.zeros(2, dtype=torch.int64), ("x",), "tabular")
    with pytest.raises(DataError, match="only 1 class"):
        inject_label_noise(DatasetSplits(one, one, one, spec={}), 0.5, seed=0)
