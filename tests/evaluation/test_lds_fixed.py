"""Fixed-seed LDS ground truth: keys of the fresh mode unchanged, subset models are the attributed run
with the removed examples weighted 0 (all-kept = the run itself, bit for bit), cached apart from the fresh
mode, and the unrolled attributor predicts it almost perfectly on a small logistic regression."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tda_explorer.attributors import make_attributor
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation import LDSConfig, compute_lds_truth, lds_score, subset_masks
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, train_model, train_run
from tda_explorer.training.weighted import retrain_fixed_seed, train_weighted

FIXED = LDSConfig(n_subsets=12, alpha=0.5, seeds=(0,), subset_seed=1, shard_size=5, mode="fixed")


def test_mode_validation_and_keys():
    with pytest.raises(ConfigError, match="mode"):
        LDSConfig(mode="same")
    assert "mode" not in LDSConfig().key_dict()  # fresh-mode artifacts keep their old keys
    assert LDSConfig(mode="fixed").key_dict()["mode"] == "fixed"


def test_all_kept_is_the_run_and_removal_is_weight_zero(tiny, model_config, train_config):
    train, queries = tiny.train, tiny.test
    masks = np.ones((2, len(train)), dtype=bool)
    masks[1, ::3] = False
    logits = retrain_fixed_seed(
        model_config, train_config, train, masks, (4,), queries, LocalExecutor(workers=1)
    )
    run = train_model(model_config, train_config, train, 4, eval_sets={"q": queries})
    assert torch.equal(logits[0, 0], run.eval_logits["q"])
    _, weighted = train_weighted(
        model_config, train_config, train, 4, masks[1].astype(float), None, {"q": queries}
    )
    assert torch.equal(logits[1, 0], weighted["q"])
    assert not torch.equal(logits[1, 0], logits[0, 0])


def test_fixed_truth_is_cached_apart_and_unrolled_predicts_it(tiny, model_config, train_config, tmp_path):
    """At a small learning rate the first-order prediction is nearly exact for this model's counterfactual
    (measured: lr 0.02 fixed 0.994 / fresh 0.724 on 20 subsets; at lr 0.2, alpha 0.5 removing half the
    data is far from first order: fixed 0.819, fresh 0.526; alpha 0.9: 0.970 / 0.633)."""
    ws = Workspace(tmp_path)
    train_config = dataclasses.replace(train_config, lr=0.02)
    fresh_cfg = LDSConfig(**{**FIXED.__dict__, "mode": "fresh"})
    one = LocalExecutor(workers=1)
    fixed = compute_lds_truth(tiny.train, tiny.test, model_config, train_config, FIXED, ws, one)
    fresh = compute_lds_truth(tiny.train, tiny.test, model_config, train_config, fresh_cfg, ws, one)
    assert fixed.key != fresh.key and fixed.config.mode == "fixed"
    np.testing.assert_array_equal(fixed.masks, subset_masks(len(tiny.train), FIXED))
    again = compute_lds_truth(tiny.train, tiny.test, model_config, train_config, FIXED, ws)
    np.testing.assert_array_equal(again.losses, fixed.losses)
    run = train_run(tiny, model_config, train_config, (0,), ws, one)
    scores = make_attributor("unrolled").fit(run, tiny.train).score(tiny.test)
    lds_fixed, lds_fresh = lds_score(scores, fixed).mean, lds_score(scores, fresh).mean
    print(f"unrolled LDS on the tiny logreg: fixed-seed {lds_fixed:.3f}, fresh-seed {lds_fresh:.3f}")
    assert lds_fixed > 0.95 and lds_fixed > lds_fresh
