from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from tda_explorer.attributors import make_attributor
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation import (
    LDSConfig,
    LDSTruth,
    compute_lds_truth,
    lds_groups,
    lds_score,
    load_lds_truth,
    subset_masks,
)
from tda_explorer.store import Workspace
from tda_explorer.training import train_run

CFG = LDSConfig(n_subsets=10, alpha=0.5, seeds=(0,), subset_seed=3, shard_size=4)  # shards of 4, 4, 2


def _fake_truth(rng: np.random.Generator, m: int, n: int, nq: int) -> LDSTruth:
    masks = np.zeros((m, n), dtype=bool)
    for j in range(m):
        masks[j, rng.choice(n, n // 2, replace=False)] = True
    losses = np.round(rng.gamma(2.0, size=(m, nq)), 1)  # rounded: ties in the targets
    cfg = LDSConfig(n_subsets=m)
    return LDSTruth(
        masks,
        losses,
        losses[:, None],
        np.zeros((m, 1, nq, 2), np.float32),
        tuple(f"t{i}" for i in range(n)),
        tuple(f"q{i}" for i in range(nq)),
        cfg,
        "fake",
    )


def test_config_validation():
    with pytest.raises(ConfigError, match="alpha"):
        LDSConfig(alpha=1.0)
    with pytest.raises(ConfigError, match="n_subsets"):
        LDSConfig(n_subsets=1)
    with pytest.raises(ConfigError, match="seeds"):
        LDSConfig(seeds=(0, 0))
    with pytest.raises(ConfigError, match="subset"):
        LDSConfig(alpha=0.01).subset_size(20)
    cfg = LDSConfig(alpha=1 / 2, seeds=[2, 1])
    assert cfg.seeds == (2, 1) and isinstance(cfg.alpha, float) and "shard_size" not in cfg.key_dict()


def test_lds_matches_reference_loop():
    rng = np.random.default_rng(0)
    truth = _fake_truth(rng, m=12, n=30, nq=9)
    scores = np.round(rng.normal(size=(9, 30)), 1)
    res = lds_score(scores, truth, n_resamples=200, seed=1)
    preds = scores @ truth.masks.T.astype(np.float64)
    want = [stats.spearmanr(preds[q], -truth.losses[:, q]).statistic for q in range(9)]
    np.testing.assert_allclose(res.per_query, want, rtol=1e-12, atol=1e-12)
    assert res.mean == pytest.approx(np.mean(want)) and res.n_valid == 9
    assert res.ci_low <= res.mean <= res.ci_high
    assert res.query_ids == truth.query_ids
    again = lds_groups(torch.from_numpy(preds), truth.losses, n_resamples=200, seed=1)
    np.testing.assert_array_equal(again.per_query, res.per_query)
    assert (again.ci_low, again.ci_high) == (res.ci_low, res.ci_high)
    with pytest.raises(ConfigError, match="shape"):
        lds_score(scores[:, :-1], truth)
    with pytest.raises(ConfigError, match="NaN"):
        lds_score(np.full((9, 30), np.nan), truth)


def test_constant_prediction_rows_are_left_out():
    rng = np.random.default_rng(2)
    truth = _fake_truth(rng, m=10, n=20, nq=5)
    scores = rng.normal(size=(5, 20))
    scores[2] = 0.0
    res = lds_score(scores, truth, n_resamples=100)
    assert np.isnan(res.per_query[2]) and res.n_valid == 4
    assert res.mean == pytest.approx(np.nanmean(res.per_query))


def test_subset_masks_sizes_seeding_and_prefix():
    masks = subset_masks(51, LDSConfig(n_subsets=6, alpha=0.3, subset_seed=5))
    assert masks.shape == (6, 51) and masks.dtype == bool
    assert (masks.sum(1) == round(0.3 * 51)).all()
    np.testing.assert_array_equal(masks, subset_masks(51, LDSConfig(n_subsets=6, alpha=0.3, subset_seed=5)))
    assert not np.array_equal(masks, subset_masks(51, LDSConfig(n_subsets=6, alpha=0.3, subset_seed=6)))
    longer = subset_masks(51, LDSConfig(n_subsets=9, alpha=0.3, subset_seed=5))
    np.testing.assert_array_equal(longer[:6], masks)  # subset j does not depend on M
    assert len({m.tobytes() for m in masks}) == 6


@pytest.fixture(scope="module")
def computed(tmp_path_factory, tiny, model_config, train_config, recorder):
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    ex = recorder()
    seen = []
    truth = compute_lds_truth(
        tiny.train, tiny.test, model_config, train_config, CFG, ws, ex, lambda d, t, m: seen.append((d, t))
    )
    return ws, ex, truth, seen


def test_truth_shapes_and_content(computed, tiny):
    _, ex, truth, seen = computed
    m, n, nq = CFG.n_subsets, len(tiny.train), len(tiny.test)
    assert truth.masks.shape == (m, n) and (truth.masks.sum(1) == round(CFG.alpha * n)).all()
    np.testing.assert_array_equal(truth.masks, subset_masks(n, CFG))
    assert truth.losses.shape == (m, nq) and truth.seed_losses.shape == (m, 1, nq)
    assert truth.logits.shape == (m, 1, nq, tiny.test.n_classes)
    assert np.isfinite(truth.losses).all() and (truth.losses > 0).all()
    assert truth.train_ids == tiny.train.ids and truth.query_ids == tiny.test.ids
    assert len(ex.jobs) == m and ex.calls == 3  # one map per shard
    for job, mask in zip(ex.jobs, truth.masks, strict=True):
        np.testing.assert_array_equal(job.mask, mask)
    assert seen[-1] == (m, m)
    logp = torch.log_softmax(torch.from_numpy(truth.logits).double(), -1)
    want = -logp[:, :, torch.arange(len(tiny.test)), tiny.test.labels].mean(1)
    np.testing.assert_allclose(truth.losses, want.numpy(), rtol=1e-12)


def test_truth_is_reused_from_the_workspace(computed, tiny, model_config, train_config, recorder):
    ws, _, truth, _ = computed
    ex = recorder()
    bigger_shards = LDSConfig(**{**CFG.key_dict(), "shard_size": 7})  # same truth, other sharding
    again = compute_lds_truth(tiny.train, tiny.test, model_config, train_config, bigger_shards, ws, ex)
    assert ex.calls == 0 and again.key == truth.key
    np.testing.assert_array_equal(again.losses, truth.losses)
    loaded = load_lds_truth(truth.key, ws)
    np.testing.assert_array_equal(loaded.masks, truth.masks)
    assert loaded.config == CFG


def test_interrupted_truth_resumes_from_finished_shards(
    computed, tmp_path, tiny, model_config, train_config, recorder
):
    _, _, reference, _ = computed
    ws = Workspace(tmp_path)
    with pytest.raises(RuntimeError, match="interruption"):
        compute_lds_truth(
            tiny.train, tiny.test, model_config, train_config, CFG, ws, recorder(fail_on_call=2)
        )
    assert len(ws.list("lds_shard")) == 1 and not ws.list("lds_truth")
    ex, seen = recorder(), []
    resumed = compute_lds_truth(
        tiny.train, tiny.test, model_config, train_config, CFG, ws, ex, lambda d, t, m: seen.append((d, t))
    )
    assert len(ex.jobs) == CFG.n_subsets - CFG.shard_size  # only the missing shards
    assert seen[0] == (CFG.shard_size, CFG.n_subsets) and seen[-1] == (CFG.n_subsets, CFG.n_subsets)
    np.testing.assert_array_equal(resumed.losses, reference.losses)
    np.testing.assert_array_equal(resumed.masks, reference.masks)


def test_lds_pipeline_sanity(computed, tiny, model_config, train_config, recorder):
    """Grad-Dot on a convex logreg predicts subset losses (LDS clearly > 0); random scores give ~0."""
    ws, _, truth, _ = computed
    run = train_run(tiny, model_config, train_config, [0], ws, recorder())
    attributor = make_attributor("grad_dot").fit(run, tiny.train)
    scores = attributor.score(tiny.test)
    good = lds_score(scores, truth)
    groups = lds_groups(attributor.score_groups(tiny.test, torch.from_numpy(truth.masks)), truth)
    assert groups.mean == pytest.approx(good.mean, abs=0.02)  # float32 group sums: ranks may tie-break
    assert good.mean > 0.25 and good.ci_low > 0.1
    rand = [lds_score(np.random.default_rng(s).normal(size=scores.shape), truth).mean for s in range(3)]
    assert abs(float(np.mean(rand))) < 0.15
    assert lds_score(-scores, truth).mean == pytest.approx(-good.mean)
