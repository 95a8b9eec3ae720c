"""The validation-harm pruning rules: what they rank first, and that they never read the test split."""

from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.attributors import make_attributor
from tda_explorer.backend.usefulness import DEFAULT_PRUNING_RULE, PRUNING_RULES, harm
from tda_explorer.data import DatasetSplits, inject_label_noise
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation.pruning import pruning_usefulness, rule_usefulness
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, train_run


@pytest.fixture(scope="module")
def noisy_run(tiny, model_config, train_config, tmp_path_factory):
    """The tiny digits set with 10% of the training labels flipped (20 planted harmful examples), one seed."""
    noisy = inject_label_noise(tiny, 0.1, 4)
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    return noisy, train_run(noisy, model_config, train_config, (0,), ws, LocalExecutor(1))


def test_harm_counts_damage_that_help_elsewhere_does_not_buy_back():
    scores = np.array(  # [3 validation queries, 3 training examples]
        [
            [5.0, -0.2, 0.0],  # example 0 helps two queries a lot and badly hurts the third
            [5.0, -0.2, 0.0],  # example 1 hurts every query a little
            [-3.0, -0.2, 0.0],  # example 2 does nothing
        ]
    )
    np.testing.assert_allclose(harm(scores), [-1.0, -0.2, 0.0])
    labels = np.zeros(3, dtype=int)
    assert np.argsort(rule_usefulness(scores, "sum", labels)).tolist() == [1, 2, 0]
    assert np.argsort(rule_usefulness(scores, "harm", labels)).tolist() == [0, 1, 2]
    loss = np.array([0.1, 3.0, 0.2])  # example 1 is the one the model fits worst
    assert np.argsort(rule_usefulness(scores, "harm_loss", labels, own_loss=loss))[0] == 1
    with pytest.raises(ConfigError, match="mislabel score"):
        rule_usefulness(scores, "harm_mislabel", labels)


def test_harm_mislabel_averages_the_two_ranks():
    scores = np.array([[-1.0, -0.5, -0.1, 0.0]])  # harm order: 0, 1, 2, 3
    labels = np.zeros(4, dtype=int)
    suspicion = np.array([0.0, 0.2, 0.9, 0.5])  # suspicion order: 2, 3, 1, 0
    # mean ranks (0.125 steps): 0 -> 1.0, 1 -> 1.0, 2 -> 0.75, 3 -> 1.25
    order = np.argsort(rule_usefulness(scores, "harm_mislabel", labels, mislabel=suspicion), kind="stable")
    assert order.tolist() == [2, 0, 1, 3]
    suspicion = np.array([0.3, 0.2, 0.9, 0.0])  # suspicion order: 2, 0, 1, 3 -> mean: 0.5, 1.0, 0.75, 1.75
    order = np.argsort(rule_usefulness(scores, "harm_mislabel", labels, mislabel=suspicion), kind="stable")
    assert order.tolist() == [0, 2, 1, 3]


def test_harm_rules_are_class_balanced_and_check_their_inputs():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], [30, 10])
    scores = rng.normal(size=(8, 40)) - 5.0 * (labels == 0)  # class 0 all harmful
    for rule in ("harm", "harm_loss"):
        use = rule_usefulness(scores, rule, labels, own_loss=rng.random(40))
        removed = np.argsort(use, kind="stable")[:8]
        assert np.bincount(labels[removed], minlength=2).tolist() == [6, 2]  # 20% of each class
    with pytest.raises(ConfigError, match="own loss"):
        rule_usefulness(scores, "harm_loss", labels)
    with pytest.raises(ConfigError, match="labels"):
        rule_usefulness(scores, "harm")
    with pytest.raises(ConfigError, match="score matrix"):
        pruning_usefulness(scores.mean(0), "harm", labels)
    with pytest.raises(ConfigError, match="shape"):
        rule_usefulness(scores, "harm_loss", labels, own_loss=np.ones(3))
    assert DEFAULT_PRUNING_RULE in PRUNING_RULES


def test_harm_rule_removes_planted_mislabels_first(noisy_run):
    noisy, run = noisy_run
    flipped = np.isin(np.asarray(noisy.train.ids), list(noisy.flipped_ids))
    scores = make_attributor("influence", solver="exact").fit(run, noisy.train).score(noisy.val)
    labels = noisy.train.labels
    k = int(flipped.sum())
    first = np.argsort(rule_usefulness(scores, "harm", labels), kind="stable")[:k]
    assert flipped[first].mean() >= 0.7  # 10% by chance (measured 0.8; mean usefulness "sum": 0.7)
    rng = np.random.default_rng(0)
    assert flipped[first].mean() > flipped[rng.permutation(len(flipped))[:k]].mean() + 0.3


class _NoTestSplits:
    """Train and validation splits; reading `test` fails the test."""

    def __init__(self, splits: DatasetSplits) -> None:
        self.train, self.val = splits.train, splits.val

    @property
    def test(self):
        raise AssertionError("a pruning rule read the test split")


def test_benchmark_rules_never_read_the_test_split(noisy_run, tmp_path):
    from benchmarks import pruning

    noisy, run = noisy_run
    uses, _ = pruning.usefulness_vectors(
        run,
        _NoTestSplits(noisy),
        {"grad_dot": ("grad_dot", {})},
        dtda=False,
        folds=2,
        workspace=Workspace(tmp_path),
    )
    rules = (*pruning.RULES, *pruning.ITERATIVE["grad_dot"])
    assert {f"grad_dot · {r}" for r in rules} | {*pruning.BASELINES, pruning.MISLABEL_ROW} == set(uses)
    assert all(u.shape == (len(noisy.train),) and np.isfinite(u).all() for u in uses.values())


def test_benchmark_table_names_the_rules_that_beat_every_baseline():
    from benchmarks import pruning

    def row(name, acc):
        return {"rule": name, "acc": [[a, np.nan, np.nan] for a in acc]}

    rows = [
        row("random", [0.85, 0.85, 0.84, 0.84]),
        row(pruning.BASELINES[0], [0.85, 0.87, 0.89, 0.88]),
        row(pruning.BASELINES[1], [0.85, 0.86, 0.88, 0.89]),
        row("a · harm", [0.85, 0.88, 0.90, 0.90]),
        row("a · class_balanced", [0.85, 0.88, 0.88, 0.90]),  # below own loss at 10%: not a winner
        row("b · harm", [0.85, 0.86, 0.87, 0.88]),
    ]
    setting = {"noise": 0.1, "fractions": [0.0, 0.05, 0.1, 0.2], "rows": rows}
    assert pruning.winners(setting) == ["a · harm"]
    means = pruning.rule_means(setting)
    assert set(means) == {"harm", "class_balanced"}
    assert means["harm"] == pytest.approx(np.mean([0.88, 0.90, 0.90, 0.86, 0.87, 0.88]))


def test_benchmark_targets_give_the_paired_seed_difference():
    from benchmarks import pruning

    def row(name, seeds):  # seeds: [K][R] per-seed accuracies
        a = np.asarray(seeds)
        return {"rule": name, "acc": [[m, np.nan, np.nan] for m in a.mean(1)], "acc_seeds": a.tolist()}

    base = np.array([[0.85, 0.86, 0.84], [0.86, 0.88, 0.87]])
    setting = {
        "noise": 0.1, "fractions": [0.0, 0.1], "best_attribution_rule": "a · harm",
        "rows": [row("random", base - 0.02), row(pruning.BASELINES[0], base), row(pruning.BASELINES[1], base),
                 row("a · harm", base + [[0, 0, 0], [0.01, 0.01, 0.01]])],
    }  # fmt: skip
    (line,) = pruning.targets(setting)
    assert line.startswith("- 10% removed") and "met" in line
    assert (
        f"− {pruning.BASELINES[0]} +0.0100 ±0.0000" in line
    )  # same-seed noise cancels in the paired difference
