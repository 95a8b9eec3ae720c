"""The app's and CLI's combined mislabel score: out-of-fold probabilities computed once per run and cached."""

from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.evaluation.label_quality import cleanlab_scores, combined_mislabel_score
from tda_explorer.evaluation.run_label_quality import (
    CLEANLAB,
    COMBINED,
    N_FOLDS,
    REPEATS,
    cached_oof_probs,
    has_oof_probs,
    label_quality_scores,
    oof_config,
)
from tda_explorer.store import Workspace
from tda_explorer.training import train_run

pytest.importorskip("cleanlab.rank")


def test_oof_probs_are_computed_once_and_keyed_by_the_labels(
    tiny, model_config, train_config, recorder, tmp_path
):
    ws = Workspace(tmp_path)
    run = train_run(tiny, model_config, train_config, (0,), workspace=ws)
    assert not has_oof_probs(run, tiny.train, ws)
    executor = recorder()
    probs = cached_oof_probs(run, tiny.train, ws, executor=executor)
    assert len(executor.jobs) == N_FOLDS * REPEATS and has_oof_probs(run, tiny.train, ws)
    again = recorder()
    np.testing.assert_array_equal(cached_oof_probs(run, tiny.train, ws, executor=again), probs)
    assert again.jobs == []  # read back, not retrained
    relabelled = tiny.train.with_labels(tiny.train.labels.roll(1))
    assert oof_config(run, relabelled) != oof_config(run, tiny.train)  # other labels: other probabilities

    scores = label_quality_scores(run, tiny.train, probs)
    np.testing.assert_allclose(scores[COMBINED], combined_mislabel_score(run, tiny.train, probs))
    np.testing.assert_allclose(scores[CLEANLAB], cleanlab_scores(probs, tiny.train.labels))
