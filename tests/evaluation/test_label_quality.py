"""Out-of-fold probabilities, cleanlab's baseline in our harness, and the combined mislabel score."""

from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.errors import ConfigError
from tda_explorer.evaluation.label_quality import (
    cleanlab_scores,
    fold_masks,
    mislabel_score,
    normalised_rank,
    out_of_fold_probs,
)
from tda_explorer.training import train_run

cleanlab_rank = pytest.importorskip("cleanlab.rank")


def test_cleanlab_scores_equal_cleanlabs_own_on_the_same_probabilities():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=50)
    labels = rng.integers(0, 4, 50)
    for method in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
        want = cleanlab_rank.get_label_quality_scores(labels, probs, method=method)
        np.testing.assert_allclose(cleanlab_scores(probs, labels, method), 1.0 - want, rtol=0, atol=1e-12)


def test_out_of_fold_probs_come_from_models_that_never_saw_the_example(
    tiny, model_config, train_config, recorder, tmp_path
):
    run = train_run(tiny, model_config, train_config, (0,), workspace=_ws(tmp_path))
    executor = recorder()
    probs = out_of_fold_probs(run, tiny.train, n_folds=4, seed=1, executor=executor)
    held = fold_masks(len(tiny.train), 4, 1)
    assert probs.shape == (len(tiny.train), 10) and np.allclose(probs.sum(1), 1.0)
    assert held.sum(0).tolist() == [1] * len(tiny.train)  # a partition
    assert len(executor.jobs) == 4
    for job, fold in zip(executor.jobs, held, strict=True):
        assert not (np.asarray(job.mask) & fold).any() and (np.asarray(job.mask) | fold).all()
    with pytest.raises(ConfigError):
        fold_masks(10, 1)


def test_mislabel_score_is_the_mean_normalised_rank():
    a, b = np.array([0.1, 0.5, 0.3]), np.array([3.0, 1.0, 2.0])
    np.testing.assert_allclose(normalised_rank(a), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(mislabel_score([a, b]), [0.5, 0.5, 0.5])
    with pytest.raises(ConfigError):
        mislabel_score([a, b[:2]])


def _ws(path):
    from tda_explorer.store import Workspace

    return Workspace(path)
