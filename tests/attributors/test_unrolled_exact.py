"""Exact scores of one query on demand (cached per run, query, class and seeds) and the metasmoothness
diagnostic with its named smooth recipes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tda_explorer.attributors.unrolled import Unrolled
from tda_explorer.attributors.unrolled.exact import exact_scores_for_query, replayable
from tda_explorer.attributors.unrolled.smooth import (
    metasmoothness,
    metasmoothness_score,
    smooth_train_config,
)
from tda_explorer.data import DatasetSplits
from tda_explorer.errors import ConfigError
from tda_explorer.models import MLPConfig
from tda_explorer.store import Workspace
from tda_explorer.training import TrainConfig

from .test_unrolled import as_run, data  # noqa: F401  (module-scoped fixture)

MCFG = MLPConfig(hidden=(8,))
RECIPE = TrainConfig(lr=0.1, momentum=0.9, epochs=3, batch_size=8, checkpoints=2)


@pytest.fixture(scope="module")
def setup(data):  # noqa: F811
    train, test = data
    splits = DatasetSplits(train, test, test, {"name": "blobs"})
    return splits, as_run(MCFG, RECIPE, train, seeds=(0, 1))


def test_exact_scores_match_the_attributor_and_are_cached(setup, tmp_path):
    splits, run = setup
    ws = Workspace(tmp_path)
    qid = splits.test.ids[3]
    steps = []
    first = exact_scores_for_query(run, qid, ws, splits, progress=lambda d, t, m: steps.append(m))
    assert not first.cached and first.seeds == (0, 1) and first.target == int(splits.test.labels[3])
    assert any("exact" in m for m in steps)
    assert sum("unrolled: seed 0, queries" in m for m in steps) == 4  # per replayed segment (15 steps, k=4)
    ref = Unrolled(seeds="all").fit(run, splits.train).score(splits.test.subset([3]))[0].numpy()
    np.testing.assert_allclose(first.scores, ref, rtol=1e-5, atol=1e-7)
    assert first.per_seed.shape == (2, len(splits.train))
    again = exact_scores_for_query(run, qid, ws, splits)
    assert again.cached and np.array_equal(again.scores, first.scores)
    support, oppose = first.top_k(3)
    assert first.scores[support[0]] == first.scores.max() and first.scores[oppose[0]] == first.scores.min()
    other = exact_scores_for_query(run, qid, ws, splits, target=(first.target + 1) % 3, seeds="first")
    assert not other.cached and other.seeds == (0,) and not np.allclose(other.scores, first.scores)


def test_exact_scores_errors(setup, tmp_path):
    splits, run = setup
    ws = Workspace(tmp_path)
    with pytest.raises(ConfigError, match="not a test example"):
        exact_scores_for_query(run, "nope", ws, splits)
    with pytest.raises(ConfigError, match="out of range"):
        exact_scores_for_query(run, splits.test.ids[0], ws, splits, target=7)
    imported = dataclasses.replace(run, train_config=None)
    assert "recipe" in replayable(imported) and replayable(run) is None
    with pytest.raises(ConfigError, match="recipe"):
        exact_scores_for_query(imported, splits.test.ids[0], ws, splits)


def test_metasmoothness_score_and_recipes(data):  # noqa: F811
    a = torch.zeros(5)
    step = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    assert metasmoothness_score(a, a + step, a + 2 * step) == pytest.approx(1.0)
    assert metasmoothness_score(a, a + step, a - step) == pytest.approx(-1.0)
    assert metasmoothness_score(a, a, a) == 1.0
    assert smooth_train_config("mlp-smooth").batch_size == 256
    with pytest.raises(ConfigError, match="unknown smooth recipe"):
        smooth_train_config("nope")
    train, test = data
    gentle = metasmoothness(
        MCFG, TrainConfig(lr=0.01, momentum=0.0, epochs=2, batch_size=8), train, test, h=0.01
    )
    assert gentle.score > 0.95 and gentle.loss_corr > 0.95
    with pytest.raises(ConfigError, match="h must be"):
        metasmoothness(MCFG, RECIPE, train, test, h=0.0)
