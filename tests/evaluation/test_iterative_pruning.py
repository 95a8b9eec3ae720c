"""Iterative pruning retrains on the kept set and scores again each round (checked against a reference)."""

from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.data import DatasetSplits, inject_label_noise
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation.iterative_pruning import (
    compute_iterative_usefulness,
    fit_and_score,
    iterative_usefulness,
    n_rounds,
)
from tda_explorer.evaluation.pruning import rule_usefulness
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, train_run

EXACT = ("influence", {"solver": "exact"})


@pytest.fixture(scope="module")
def noisy_run(tiny, model_config, train_config, tmp_path_factory):
    """The tiny digits set (200 training examples) with 10% flipped labels, one logistic-regression seed."""
    noisy = inject_label_noise(tiny, 0.1, 4)
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    return noisy, ws, train_run(noisy, model_config, train_config, (0,), ws, LocalExecutor(1))


def _score(run, splits):
    return fit_and_score(run, splits, *EXACT)


def test_rounds_retrain_rescore_and_match_a_reference(noisy_run, model_config, train_config, recorder):
    noisy, ws, run = noisy_run
    n, step = len(noisy.train), 10  # 2 rounds of 5% -> 10%
    calls = []

    def score_fn(r, s):
        calls.append((r.key, len(s.train)))
        return _score(r, s)

    executor = recorder()
    useful = iterative_usefulness(run, noisy, "iterative_harm", 0.1, score_fn, 0.05, executor=executor)
    order = np.argsort(useful, kind="stable")
    # round 1 scored the run itself, round 2 a model retrained on the 190 kept examples (one job per seed)
    assert calls[0] == (run.key, n) and calls[1][1] == n - step and calls[1][0] != run.key
    assert len(executor.jobs) == 1 and len(executor.jobs[0].data) == n - step
    # reference: the same two rounds written out with the public training entry point
    labels = noisy.train.labels.numpy()
    first = np.argsort(rule_usefulness(_score(run, noisy), "harm", labels), kind="stable")[:step]
    assert order[:step].tolist() == first.tolist()
    kept = np.setdiff1d(np.arange(n), first)
    sub = DatasetSplits(noisy.train.subset(kept), noisy.val, noisy.test, {**noisy.spec, "kept": len(kept)})
    ref_run = train_run(sub, model_config, train_config, (0,), ws, LocalExecutor(1))
    second = kept[
        np.argsort(rule_usefulness(_score(ref_run, sub), "harm", labels[kept]), kind="stable")[:step]
    ]
    assert sorted(order[step : 2 * step].tolist()) == sorted(second.tolist())
    # and it is not the one-shot choice: round 2 picked examples one-shot ranks beyond its 20 lowest
    one_shot = np.argsort(rule_usefulness(_score(run, noisy), "harm", labels), kind="stable")[: 2 * step]
    assert set(order[: 2 * step].tolist()) != set(one_shot.tolist())
    # the removed examples are below every kept one; kept ones keep their last-round rank in [0, 1]
    assert useful[order[: 2 * step]].max() < 0 <= useful[order[2 * step :]].min()


def test_cached_and_checked(noisy_run, recorder):
    noisy, ws, run = noisy_run
    executor = recorder()
    args = (run, noisy, *EXACT, "iterative_class_balanced", 0.1, 0.05)
    a = compute_iterative_usefulness(*args, workspace=ws, executor=executor)
    b = compute_iterative_usefulness(*args, workspace=ws, executor=executor)
    np.testing.assert_array_equal(a, b)
    assert executor.calls == 1  # the second call read the stored artifact
    with pytest.raises(ConfigError, match="mislabel"):
        iterative_usefulness(run, noisy, "iterative_harm_mislabel", 0.1, _score, 0.05)
    with pytest.raises(ConfigError, match="not one of"):
        iterative_usefulness(run, noisy, "harm", 0.1, _score, 0.05)
    with pytest.raises(ConfigError, match="round_fraction"):
        n_rounds(100, 0.1, 0.2)
    assert n_rounds(4000, 0.1) == (100, 400)


def test_round_sizes_and_retraining_keep_the_run(noisy_run, recorder):
    from dataclasses import replace

    from tda_explorer.evaluation.iterative_pruning import retrain_kept, round_sizes

    assert round_sizes(32, 65).tolist() == [32, 33]  # no 1-example round paying a retraining
    assert round_sizes(100, 400).tolist() == [100] * 4 and round_sizes(5, 3).tolist() == [3]
    noisy, _, run = noisy_run
    imported = replace(run, imported={"factory": "pkg.mod:build"})
    kept = np.ones(len(noisy.train), dtype=bool)
    kept[:7] = False
    again = retrain_kept(imported, noisy.train, kept, recorder())
    assert again.imported == imported.imported and again.key.startswith(f"{run.key}-kept-")
    assert again.seeds == run.seeds and again.model_config == run.model_config
