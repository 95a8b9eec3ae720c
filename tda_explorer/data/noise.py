"""Label-noise injection for mislabel-detection experiments (seeded and recorded)."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from tda_explorer.data._common import check_fraction
from tda_explorer.data.example_set import DatasetSplits
from tda_explorer.errors import ConfigError, DataError


def inject_label_noise(splits: DatasetSplits, fraction: float, seed: int) -> DatasetSplits:
    """Flip `round(fraction * n_train)` training labels, each to a uniformly drawn *other* class.

    Which examples flip and their new classes both come from `numpy.random.default_rng(seed)`.
    Validation and test sets are returned unchanged (the same objects).

    Args:
        splits: a noise-free dataset (its `flipped_ids` must be empty).
        fraction: fraction of training examples to flip, in [0, 1).
        seed: seed of the choice of examples and of their new labels.

    Returns:
        New DatasetSplits with the noisy train labels (`int64 [n_train]`), `flipped_ids` the flipped
        training ids in train order, `original_labels` `{flipped id: true label}`, and `spec` extended
        with `{"noise": {"fraction": fraction, "seed": seed}}` (and `noise_fraction` / `noise_seed`
        set when the spec has those keys, as specs from `DatasetSpec` do).

    Raises:
        ConfigError: fraction outside [0, 1), seed not a non-negative int, or noise already injected.
        DataError: the dataset has fewer than two classes.
    """
    fraction = check_fraction(fraction, "noise fraction")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"noise seed must be a non-negative integer, got {seed!r}.")
    if splits.flipped_ids:
        raise ConfigError(
            f"these splits already carry label noise ({len(splits.flipped_ids)} flipped labels); "
            "inject noise once, into the clean dataset."
        )
    train = splits.train
    k = train.n_classes
    if k < 2:
        raise DataError(f"cannot flip labels of {train.name or 'the training set'}: it has only {k} class.")
    n_flip = round(fraction * len(train))
    rng = np.random.default_rng(int(seed))
    pos = np.sort(rng.choice(len(train), size=n_flip, replace=False))
    shift = rng.integers(1, k, size=n_flip)  # 1..k-1: never the original class, uniform over the others
    labels = train.labels.clone()
    old = labels[torch.from_numpy(pos)]
    labels[torch.from_numpy(pos)] = (old + torch.from_numpy(shift)) % k
    flipped = tuple(train.ids[i] for i in pos)
    spec = dict(splits.spec)
    spec["noise"] = {"fraction": fraction, "seed": int(seed)}
    if "noise_fraction" in spec:
        spec["noise_fraction"] = fraction
    if "noise_seed" in spec:
        spec["noise_seed"] = int(seed)
    return DatasetSplits(
        train=train.with_labels(labels),
        val=splits.val,
        test=splits.test,
        spec=spec,
        flipped_ids=flipped,
        original_labels={i: int(v) for i, v in zip(flipped, old.tolist(), strict=True)},
    )
