"""The cached pruning curve: computed once per (usefulness, data, model, training, fractions, seeds)."""

from __future__ import annotations

import numpy as np

from tda_explorer.evaluation import compute_pruning_curve, stored_pruning_curve
from tda_explorer.store import Workspace


def test_pruning_curve_is_stored_and_reused(tmp_path, tiny, model_config, train_config, recorder):
    ws = Workspace(tmp_path)
    use = np.random.default_rng(1).normal(size=len(tiny.train))
    args = (tiny.train, tiny.test, model_config, train_config, (0.0, 0.2))
    assert stored_pruning_curve(use, *args, workspace=ws) is None
    first_ex = recorder()
    first = compute_pruning_curve(use, *args, workspace=ws, executor=first_ex, source="scores abc")
    assert len(first_ex.jobs) == 3  # k=0 once, then method and random at 20%
    again_ex = recorder()
    again = compute_pruning_curve(use, *args, workspace=ws, executor=again_ex)
    assert again_ex.jobs == []  # nothing retrained
    stored = stored_pruning_curve(use, *args, workspace=ws)
    for curve in (again, stored):
        assert curve.fractions == first.fractions and curve.n_removed == first.n_removed
        assert curve.seeds == first.seeds and curve.removal_order == first.removal_order
        for name in ("method_acc", "random_acc", "method_loss", "random_loss"):
            np.testing.assert_array_equal(getattr(curve, name), getattr(first, name))
    # other usefulness, other fractions or other seeds: not the same artifact
    assert stored_pruning_curve(use[::-1].copy(), *args, workspace=ws) is None
    assert stored_pruning_curve(use, *args[:4], (0.0, 0.3), workspace=ws) is None
    assert stored_pruning_curve(use, *args, seeds=(0, 1), workspace=ws) is None
