"""Out-of-fold probabilities, cleanlab's baseline in our harness, and the combined mislabel score."""

from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.errors import ConfigError
from tda_explorer.evaluation.label_quality import (
    SIGNALS,
    cleanlab_scores,
    combined_mislabel_score,
    fold_masks,
    loss_dynamics,
    mislabel_score,
    mislabel_signal,
    normalised_rank,
    oof_margin_score,
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


def test_repeated_out_of_fold_probs_average_the_repeats(tiny, model_config, train_config, recorder, tmp_path):
    run = train_run(tiny, model_config, train_config, (0,), workspace=_ws(tmp_path))
    executor = recorder()
    mean = out_of_fold_probs(run, tiny.train, n_folds=2, seed=3, train_seed=1, executor=executor, repeats=2)
    assert len(executor.jobs) == 4 and [j.seed for j in executor.jobs] == [1, 1, 2, 2]
    first = out_of_fold_probs(run, tiny.train, n_folds=2, seed=3, train_seed=1)
    second = out_of_fold_probs(run, tiny.train, n_folds=2, seed=4, train_seed=2)
    np.testing.assert_allclose(mean, (first + second) / 2, atol=1e-6)
    with pytest.raises(ConfigError, match="repeats"):
        out_of_fold_probs(run, tiny.train, repeats=0)


def test_oof_margin_and_loss_dynamics(tiny, model_config, train_config, tmp_path):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    np.testing.assert_allclose(oof_margin_score(probs, np.array([0, 0])), [-0.5, 0.5])
    with pytest.raises(ConfigError):
        oof_margin_score(probs, np.array([0, 0, 1]))
    run = train_run(tiny, model_config, train_config, (0, 1), workspace=_ws(tmp_path))
    dyn = loss_dynamics(run, tiny.train)
    assert dyn.shape == (len(tiny.train),) and np.isfinite(dyn).all() and (dyn > 0).all()


def test_combined_score_never_reads_the_flip_record(tiny, model_config, train_config, tmp_path):
    """Same inputs and labels with and without a record of the flips: the same score. A score that read
    `flipped_ids` (or re-drew the flips from the recorded noise seed) would differ."""
    from tda_explorer.data import DatasetSplits, inject_label_noise

    noisy = inject_label_noise(tiny, 0.2, 0)
    unrecorded = DatasetSplits(
        train=tiny.train.with_labels(noisy.train.labels.clone()),
        val=tiny.val,
        test=tiny.test,
        spec={**tiny.spec, "relabelled": "by hand"},
    )
    assert noisy.flipped_ids and not unrecorded.flipped_ids
    scores = []
    for splits in (noisy, unrecorded):
        run = train_run(splits, model_config, train_config, (0,), workspace=_ws(tmp_path))
        probs = out_of_fold_probs(run, splits.train, n_folds=2)
        scores.append(combined_mislabel_score(run, splits.train, probs))
        for name in SIGNALS:
            assert mislabel_signal(name, run, splits.train, probs).shape == (len(tiny.train),)
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-6)
    flipped = np.isin(np.asarray(noisy.train.ids), np.asarray(noisy.flipped_ids))
    assert scores[0][flipped].mean() > scores[0][~flipped].mean()  # and it finds flips
    with pytest.raises(ConfigError, match="out-of-fold"):
        combined_mislabel_score(run, splits.train, None, ("oof_margin",))


def test_knn_disagreement_is_the_share_of_neighbours_with_another_label(
    tiny, model_config, train_config, tmp_path
):
    import torch

    from tda_explorer.backend.features import representations
    from tda_explorer.evaluation.label_quality import knn_disagreement
    from tda_explorer.models import prepare_inputs

    run = train_run(tiny, model_config, train_config, (0,), workspace=_ws(tmp_path))
    got = knn_disagreement(run, tiny.train, k=3, block=7)  # blocks that do not divide N
    model = run.model(0)
    f = representations(model, prepare_inputs(model, tiny.train.inputs)).float()
    sim = f @ f.T
    sim.fill_diagonal_(-torch.inf)
    y = tiny.train.labels
    want = (y[sim.topk(3, dim=1).indices] != y[:, None]).double().mean(1).numpy()
    np.testing.assert_allclose(got, want)
    assert got.shape == (len(tiny.train),) and ((got >= 0) & (got <= 1)).all()
    with pytest.raises(ConfigError, match="neighbours"):
        knn_disagreement(run, tiny.train, k=len(tiny.train))
