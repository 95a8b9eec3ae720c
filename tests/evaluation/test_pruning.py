from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.errors import ConfigError
from tda_explorer.evaluation import pruning_curve, usefulness_from_scores


def test_usefulness_is_the_column_mean():
    scores = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.testing.assert_array_equal(usefulness_from_scores(scores), [4.0, 5.0, 6.0, 7.0])


def test_pruning_curve_on_tiny_data(tiny, model_config, train_config, recorder):
    n = len(tiny.train)
    usefulness = np.random.default_rng(0).normal(size=n)
    fractions = (0.0, 0.25, 0.5)
    ex = recorder()
    curve = pruning_curve(
        usefulness,
        tiny.train,
        tiny.test,
        model_config,
        train_config,
        fractions,
        seeds=(0, 1),
        random_seed=3,
        executor=ex,
    )
    assert curve.n_removed == (0, 50, 100) and curve.seeds == (0, 1)
    for arr in (curve.method_acc, curve.random_acc, curve.method_loss, curve.random_loss):
        assert arr.shape == (3, 2) and np.isfinite(arr).all()
    assert ((curve.method_acc >= 0) & (curve.method_acc <= 1)).all()
    np.testing.assert_array_equal(curve.method_acc[0], curve.random_acc[0])  # nothing removed: same model
    assert len(ex.jobs) == 5 * 2  # the k=0 mask is trained once
    order = np.argsort(usefulness, kind="stable")
    assert curve.removal_order == tuple(tiny.train.ids[i] for i in order)
    masks = {tuple(np.flatnonzero(~job.mask)) for job in ex.jobs}
    assert tuple(sorted(order[:50])) in masks and tuple(sorted(order[:100])) in masks
    rows = curve.table()
    assert [r["fraction"] for r in rows] == list(fractions) and {"method_acc", "random_acc_std"} <= set(
        rows[0]
    )


def test_random_removal_is_seeded(tiny, model_config, train_config, recorder):
    def removed(seed):
        ex = recorder()
        pruning_curve(
            np.zeros(len(tiny.train)),
            tiny.train,
            tiny.test,
            model_config,
            train_config,
            (0.1,),
            random_seed=seed,
            executor=ex,
        )
        return [tuple(np.flatnonzero(~job.mask)) for job in ex.jobs]

    first = removed(7)
    assert first == removed(7) and first != removed(8)
    with pytest.raises(ConfigError, match="fraction"):
        pruning_curve(np.zeros(len(tiny.train)), tiny.train, tiny.test, model_config, None, (1.0,))
