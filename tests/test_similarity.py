"""Sort by similarity: FAISS cosine top-k over cached features equals a brute-force numpy ranking."""

from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.errors import ConfigError
from tda_explorer.models import MLPConfig
from tda_explorer.similarity import REPRESENTATIONS, most_similar, similarity_features
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainConfig, train_run
from tests.fixtures import digits_head


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    splits = digits_head(300, 20, 30, tag=[300, 30])
    ws = Workspace(tmp_path_factory.mktemp("sim"))
    cfg = TrainConfig(lr=0.1, epochs=2, batch_size=32, checkpoints=1)
    run = train_run(splits, MLPConfig(hidden=(32,)), cfg, [0], ws, LocalExecutor(1))
    return run, splits, ws


def brute_force(train: np.ndarray, query: np.ndarray) -> np.ndarray:
    t = train / np.linalg.norm(train, axis=1, keepdims=True)
    return t.astype(np.float64) @ (query / np.linalg.norm(query)).astype(np.float64)


@pytest.mark.parametrize("representation", REPRESENTATIONS)
def test_matches_brute_force_for_test_and_train_queries(setup, representation):
    run, splits, ws = setup
    train_f, test_f = similarity_features(run, splits, ws, representation)
    assert train_f.array.shape[0] == 300 and test_f.array.shape[0] == 30
    for query_id, split_f, row in ((splits.test.ids[4], test_f, 4), (splits.train.ids[7], train_f, 7)):
        sim = most_similar(run, splits, query_id, ws, k=10, representation=representation)
        ref = brute_force(np.asarray(train_f.array), np.asarray(split_f.array[row]))
        if split_f is train_f:
            ref[row] = -np.inf  # the example itself is left out
        order = np.argsort(-ref, kind="stable")[:10]
        assert sim.similarities == pytest.approx(ref[order], abs=1e-5)
        assert list(sim.positions) == list(order) or np.allclose(ref[sim.positions], ref[order], atol=1e-5)
        assert sim.ids == tuple(splits.train.ids[i] for i in sim.positions)
        assert 7 not in sim.positions or split_f is test_f
        assert np.all(np.diff(sim.similarities) <= 1e-6)


def test_bad_inputs(setup):
    run, splits, ws = setup
    with pytest.raises(ConfigError, match="neither"):
        most_similar(run, splits, "nope", ws)
    with pytest.raises(ConfigError, match="representation"):
        most_similar(run, splits, splits.test.ids[0], ws, representation="pixels")
    with pytest.raises(ConfigError, match="k must"):
        most_similar(run, splits, splits.test.ids[0], ws, k=0)
