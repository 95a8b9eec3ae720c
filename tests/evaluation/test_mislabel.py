from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tda_explorer.attributors import make_attributor
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation import mislabel_experiment, mislabel_metrics, recall_at_fraction
from tda_explorer.store import Workspace


def test_auc_hand_case_equals_sklearn():
    scores = np.array([0.9, 0.8, 0.1, 0.4, 0.7, 0.3])
    flipped = np.array([True, False, False, True, False, False])
    res = mislabel_metrics(scores, flipped)
    assert res.auc == pytest.approx(6 / 8)  # positive-negative pairs ranked right: 4 + 2 of 8
    assert res.auc == pytest.approx(roc_auc_score(flipped, scores))
    assert res.n_flipped == 2 and res.n_train == 6
    ids = [f"t{i}" for i in range(6)]
    by_ids = mislabel_metrics(torch.tensor(scores), ["t3", "t0"], ids)
    assert by_ids == res


def test_recall_at_top_fractions():
    scores = np.arange(20, dtype=np.float64)
    flipped = np.zeros(20, dtype=bool)
    flipped[[19, 18, 5, 0]] = True
    res = mislabel_metrics(scores, flipped)
    assert res.recall_at == {0.1: 0.5, 0.2: 0.5}  # top 2 and top 4 hold the flips at 19 and 18
    assert mislabel_metrics(scores, flipped, inspect=[0.75]).recall_at[0.75] == 0.75  # top 15 reach 5
    assert mislabel_metrics(-scores, flipped).recall_at[0.1] == 0.25  # examples 0 and 1: one flip of four
    assert res.to_dict()["recall_at"] == {"0.1": 0.5, "0.2": 0.5}


def test_recall_shares_tied_places():
    scores = np.array([3.0, 2.0, 2.0, 2.0, 1.0, 0.0])
    positives = np.array([True, False, True, False, False, False])
    # top 2 = the 3 and one of three tied 2s (1/3 chance that it is the flipped one)
    assert recall_at_fraction(scores, positives, 2 / 6) == pytest.approx((1 + 1 / 3) / 2)
    assert recall_at_fraction(scores, positives, 0.0) == 0.0
    assert np.isnan(recall_at_fraction(scores, np.zeros(6, dtype=bool), 0.5))


def test_bad_inputs_raise():
    with pytest.raises(ConfigError, match="train_ids"):
        mislabel_metrics(np.zeros(3), ["a"])
    with pytest.raises(ConfigError, match="not among"):
        mislabel_metrics(np.zeros(3), ["z"], ["a", "b", "c"])
    with pytest.raises(ConfigError, match="shape"):
        mislabel_metrics(np.zeros(3), np.zeros(4, dtype=bool))
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        mislabel_metrics(np.zeros(3), np.zeros(3, dtype=bool), inspect=[1.5])


def test_mislabel_experiment_on_tiny_data(tmp_path, tiny, model_config, train_config, recorder):
    report = mislabel_experiment(
        tiny,
        make_attributor("grad_dot"),
        model_config,
        train_config,
        fraction=0.1,
        noise_seed=4,
        workspace=Workspace(tmp_path),
        executor=recorder(),
    )
    assert report.method == "grad_dot" and len(report.flipped_ids) == round(0.1 * len(tiny.train))
    assert report.scores.shape == (len(tiny.train),)
    for res in (report.result, report.baseline):
        assert res.n_flipped == 20 and 0.0 <= res.auc <= 1.0
        assert set(res.recall_at) == {0.1, 0.2} and all(0.0 <= v <= 1.0 for v in res.recall_at.values())
    assert report.baseline.auc > 0.8  # flipped examples have a high training loss even after 5 epochs
    assert report.result.auc > 0.8  # ... and large gradients
    assert report.to_dict()["noise"] == {"fraction": 0.1, "seed": 4}
