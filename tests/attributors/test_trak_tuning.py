"""The held-out selection of TRAK's `damping="auto"`: on a synthetic table whose answer is known it finds
that answer; its size (subsets x validation queries) is part of every key, so a held-out signal or a score
made with another size is never reused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_explorer.attributors import make_attributor, trak_tuning
from tda_explorer.errors import ConfigError
from tda_explorer.store import Workspace


def _synthetic(seed: int = 0, n: int = 12, m: int = 40, r: int = 8):
    """One model's spectral parts `(s2 [r], a [n, r], g [m, r])` with eigenvalues spread over 6 decades, so
    that each lambda ranks the subsets differently."""
    gen = torch.Generator().manual_seed(seed)
    s2 = torch.logspace(-3, 3, r, dtype=torch.float64)
    a = torch.randn(n, r, generator=gen, dtype=torch.float64)
    g = torch.randn(m, r, generator=gen, dtype=torch.float64)
    return s2, a, g


def _losses_at(parts, scale: float, factor: float, noise: float = 0.0, seed: int = 1) -> np.ndarray:
    """Held-out losses `[M, n]` that the TRAK predictions at `factor` rank exactly (plus Gaussian noise)."""
    s2, a, g = parts
    pred = ((a / (s2 + factor * scale)) @ g.T).numpy()  # [n, M], larger = more helpful = lower loss
    rng = np.random.default_rng(seed)
    return -pred.T + noise * pred.std() * rng.standard_normal(pred.T.shape)


@pytest.mark.parametrize("truth", [0.0, 0.1, 2.0, 20.0])
def test_choose_factor_finds_the_factor_that_generated_the_losses(truth):
    parts, scale = _synthetic(), 0.7
    factor, table = trak_tuning.choose_factor([parts], [scale], _losses_at(parts, scale, truth))
    assert table[truth] == pytest.approx(1.0)  # a perfect rank correlation at the true factor
    assert max(table, key=table.get) == truth
    grid = sorted(trak_tuning.FACTORS)
    i = grid.index(truth)
    # refined between the true factor's grid neighbours (kept when it is 0: plain TRAK)
    assert grid[max(i - 1, 0)] <= factor <= grid[min(i + 1, len(grid) - 1)]
    if truth == 0.0:
        assert factor == 0.0


def test_choose_factor_with_noisy_losses_stays_near_the_truth_and_a_wrong_table_would_not():
    """With held-out losses that the factor-2 predictions rank up to noise, the choice lies within one grid step
    of 2; the same rule on losses made at factor 20 lands elsewhere (the test can fail)."""
    parts, scale = _synthetic(seed=3, n=30, m=60), 1.3
    chosen, _ = trak_tuning.choose_factor([parts], [scale], _losses_at(parts, scale, 2.0, noise=0.3))
    assert 1.0 <= chosen <= 5.0
    other, _ = trak_tuning.choose_factor([parts], [scale], _losses_at(parts, scale, 20.0, noise=0.3))
    assert other > 5.0


def test_tune_masks_are_half_subsets_whose_prefix_does_not_depend_on_their_number():
    small, large = trak_tuning.tune_masks(101, 4), trak_tuning.tune_masks(101, trak_tuning.TUNE_SUBSETS)
    assert large.shape == (trak_tuning.TUNE_SUBSETS, 101) and (large.sum(1) == 50).all()
    assert np.array_equal(small, large[:4])


def test_the_validation_query_count_keys_the_held_out_losses_and_the_scores(tiny_run, tmp_path, monkeypatch):
    """tune_queries picks the first validation examples (all when fewer); each count has its own held-out
    artifact and its own score key: a signal made with another count is never reused."""
    monkeypatch.setenv("TDA_WORKERS", "1")
    run, train, queries = tiny_run
    val = queries.subset(range(8), name="val")
    ws = Workspace(tmp_path)
    chosen = {}
    for n_queries in (3, 50):
        trak_tuning._MEMORY.clear()
        att = make_attributor("trak", proj_dim=16, tune_subsets=4, tune_queries=n_queries)
        att.workspace, att.validation = ws, val
        att.fit(run, train)
        chosen[n_queries] = att
    assert chosen[3].tuning_.n_queries == 3 and chosen[50].tuning_.n_queries == len(val)
    assert len(ws.list("trak_tune")) == 2  # one held-out artifact per query count
    assert chosen[3].config() != chosen[50].config()  # score artifacts are keyed by the count too
    assert make_attributor("trak").config()["tune_queries"] == trak_tuning.TUNE_QUERIES
    with pytest.raises(ConfigError, match="tune_queries"):
        make_attributor("trak", tune_queries=1)
