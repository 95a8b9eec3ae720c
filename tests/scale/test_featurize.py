"""Sharded featurization: equals the direct computation, resumes from saved shards, refuses bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_explorer.backend.features import gradient_features, representations
from tda_explorer.backend.projection import RandomProjector
from tda_explorer.data import load_digits_splits
from tda_explorer.errors import ConfigError
from tda_explorer.models import MLPConfig
from tda_explorer.scale.featurize import (
    FEATURES_KIND,
    SHARD_KIND,
    FeatureConfig,
    featurize,
    state_fingerprint,
)
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainConfig, train_model
from tda_explorer.training.trainer import load_model

CFG = MLPConfig(hidden=(16,))


@pytest.fixture(scope="module")
def setup():
    digits = load_digits_splits(seed=0)
    train = digits.train.subset(np.arange(300))
    state = train_model(
        CFG, TrainConfig(optimizer="sgd", lr=0.1, epochs=1, batch_size=64), train, 0
    ).final_state
    return train, state


def test_projected_gradients_equal_the_direct_computation(setup, tmp_path) -> None:
    train, state = setup
    out = featurize(
        CFG,
        state,
        train,
        FeatureConfig(projection_dim=20, shard_size=70),
        Workspace(tmp_path),
        LocalExecutor(1),
    )
    assert isinstance(out.array, np.memmap) and out.array.dtype == np.float32 and out.ids == train.ids
    model = load_model(CFG, train.input_shape, train.n_classes, state)
    p = sum(x.numel() for x in model.parameters())
    direct = gradient_features(model, train.inputs, train.labels, projector=RandomProjector(p, 20, 0))
    assert np.allclose(out.array, direct.float().numpy(), atol=1e-6)


def test_representations_and_raw_gradients(setup, tmp_path) -> None:
    train, state = setup
    ws = Workspace(tmp_path)
    reps = featurize(CFG, state, train, FeatureConfig(kind="repr", shard_size=128), ws, LocalExecutor(1))
    model = load_model(CFG, train.input_shape, train.n_classes, state)
    assert np.allclose(reps.array, representations(model, train.inputs).float().numpy(), atol=1e-6)
    raw = featurize(CFG, state, train, FeatureConfig(params="head", shard_size=1000), ws, LocalExecutor(1))
    assert raw.array.shape == (300, 16 * 10 + 10)


def test_resumes_from_saved_shards_and_reuses_the_result(setup, tmp_path) -> None:
    train, state = setup
    ws = Workspace(tmp_path)
    cfg = FeatureConfig(projection_dim=8, shard_size=50)
    calls: list[int] = []

    class Failing(LocalExecutor):
        """Saves the first two shards, then dies (like a crash mid-way)."""

        def map(self, fn, jobs, progress=None, on_result=None):
            calls.append(len(jobs))
            for i, job in enumerate(jobs[:2]):
                on_result(i, fn(job))
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        featurize(CFG, state, train, cfg, ws, Failing(1))
    assert len(ws.list(SHARD_KIND)) == 2 and ws.list(FEATURES_KIND) == []

    class Counting(LocalExecutor):
        def map(self, fn, jobs, progress=None, on_result=None):
            calls.append(len(jobs))
            return super().map(fn, jobs, progress, on_result)

    resumed = featurize(CFG, state, train, cfg, ws, Counting(1))
    again = featurize(CFG, state, train, cfg, ws, Counting(1))
    assert calls == [6, 4]  # 6 shards; the rerun computed the 4 missing ones; the third call none
    fresh = featurize(CFG, state, train, cfg, Workspace(tmp_path / "fresh"), LocalExecutor(1))
    assert np.array_equal(resumed.array, fresh.array) and again.key == resumed.key


def test_key_follows_weights_and_settings(setup) -> None:
    train, state = setup
    other = {k: v + 1 for k, v in state.items()}
    assert state_fingerprint(state) != state_fingerprint(other)
    assert FeatureConfig(shard_size=5).key_dict() == FeatureConfig(shard_size=7).key_dict()
    with pytest.raises(ConfigError):
        FeatureConfig(kind="logits")
    with pytest.raises(ConfigError):
        FeatureConfig(projection_dim=0)
    with pytest.raises(ConfigError):
        FeatureConfig(objective="hinge")
    assert torch.is_tensor(next(iter(state.values())))


def test_features_written_before_workspace_cached_are_found(setup, tmp_path) -> None:
    """A "features" artifact written by the earlier hand-written block (same config key) is reused as is."""
    from dataclasses import asdict

    from tda_explorer.scale.featurize import features_config
    from tda_explorer.store import save_array

    train, state = setup
    ws = Workspace(tmp_path)
    config = FeatureConfig(projection_dim=4, shard_size=100)
    cfg = features_config(CFG, state, train, config)
    sentinel = np.arange(len(train) * 4, dtype=np.float32).reshape(len(train), 4)
    with ws.write(FEATURES_KIND, cfg, extra={"config": asdict(config), "n": len(train), "dim": 4}) as d:
        save_array(d, "features", sentinel)
        save_array(d, "ids", np.asarray(train.ids, dtype=str))

    class NoJobs(LocalExecutor):
        def map(self, *args, **kwargs):
            raise AssertionError("featurized again instead of reusing the stored artifact")

    out = featurize(CFG, state, train, config, ws, NoJobs(1))
    assert out.key == ws.key(FEATURES_KIND, cfg) and out.ids == train.ids
    np.testing.assert_array_equal(out.array, sentinel)
    assert ws.list(SHARD_KIND) == []
