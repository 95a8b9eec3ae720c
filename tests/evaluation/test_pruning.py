from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.errors import ConfigError
from tda_explorer.evaluation import pruning_curve, usefulness_from_scores
from tda_explorer.evaluation.pruning import (
    PruningCurve,
    best_pruning_rule,
    class_balanced_usefulness,
    pruning_curves,
    pruning_usefulness,
)


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


def test_pruning_curves_share_random_removal_and_train_each_kept_set_once(
    tiny, model_config, train_config, recorder
):
    n = len(tiny.train)
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=n), rng.normal(size=n)
    ex = recorder()
    curves = pruning_curves(
        {"a": a, "b": b, "a again": a}, tiny.train, tiny.test, model_config, train_config, (0.0, 0.1), (0,),
        random_seed=3, executor=ex,
    )  # fmt: skip
    assert list(curves) == ["a", "b", "a again"]
    assert len(ex.jobs) == 4  # full set, random 10%, a's 10%, b's 10% ("a again" reuses a's)
    np.testing.assert_array_equal(curves["a"].method_acc, curves["a again"].method_acc)
    np.testing.assert_array_equal(curves["a"].random_acc, curves["b"].random_acc)
    single = pruning_curve(a, tiny.train, tiny.test, model_config, train_config, (0.0, 0.1), random_seed=3)
    np.testing.assert_allclose(single.method_acc, curves["a"].method_acc)
    with pytest.raises(ConfigError):
        pruning_curves({}, tiny.train, tiny.test, model_config, train_config)


def test_class_balanced_rule_removes_each_class_in_proportion():
    labels = np.repeat([0, 1], [30, 10])
    useful = np.concatenate([np.linspace(-5, -1, 30), np.linspace(1, 5, 10)])  # class 0 all "harmful"
    plain = np.argsort(pruning_usefulness(useful, "sum"), kind="stable")[:8]
    balanced = np.argsort(pruning_usefulness(useful, "class_balanced", labels), kind="stable")[:8]
    assert set(labels[plain]) == {0}
    assert np.bincount(labels[balanced], minlength=2).tolist() == [6, 2]  # 20% of each class
    cb = class_balanced_usefulness(useful, labels)
    assert cb.min() > 0 and cb.max() < 1 and np.argmin(cb[labels == 1]) == 0


def test_normalised_rule_divides_out_the_gradient_norm():
    labels = np.zeros(3, dtype=int)
    useful = np.array([-4.0, -1.0, 2.0])
    si = np.array([16.0, 0.25, 1.0])  # |g|^2: the first is only large, not aligned against validation
    order = np.argsort(pruning_usefulness(useful, "normalised", labels, si))
    assert order.tolist() == [1, 0, 2]  # -1/0.5 = -2 is the most harmful per unit of gradient
    with pytest.raises(ConfigError, match="self-influence"):
        pruning_usefulness(useful, "normalised", labels)
    with pytest.raises(ConfigError, match="labels"):
        pruning_usefulness(useful, "class_balanced")
    with pytest.raises(ConfigError, match="rule"):
        pruning_usefulness(useful, "best")


def test_best_pruning_rule_is_the_highest_mean_accuracy_over_removed_fractions():
    def curve(acc, rand):
        acc, rand = np.asarray(acc, float)[:, None], np.asarray(rand, float)[:, None]
        return PruningCurve((0.0, 0.1, 0.2), (0, 1, 2), (0,), (), acc, -acc, rand, -rand)

    curves = {
        "loss": curve([0.5, 0.80, 0.80], [0.5, 0.6, 0.6]),
        "trak": curve([0.9, 0.81, 0.82], [0.9, 0.8, 0.79]),  # k = 0 ignored: it is the same model
    }
    assert best_pruning_rule(curves) == "trak"
    assert best_pruning_rule(curves, against_random=True) == "loss"
    with pytest.raises(ConfigError):
        best_pruning_rule({})
