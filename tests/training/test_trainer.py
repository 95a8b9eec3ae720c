"""Training: bit-identical determinism, checkpoints with step and lr, masks, executors, runs cache."""

from __future__ import annotations

import pytest
import torch

from tda_explorer.data import load_digits_splits
from tda_explorer.errors import ConfigError
from tda_explorer.models import LogRegConfig, MLPConfig
from tda_explorer.store import Workspace
from tda_explorer.training import (
    LocalExecutor,
    TrainConfig,
    load_run,
    retrain_on_subsets,
    train_model,
    train_run,
)
from tda_explorer.training.trainer import checkpoint_steps


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits(seed=0)


FAST = TrainConfig(optimizer="sgd", lr=0.1, epochs=3, batch_size=64, checkpoints=3, schedule="cosine")


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_bit_identical_weights(digits):
    cfg = MLPConfig(hidden=(32,), dropout=0.2)
    a = train_model(cfg, FAST, digits.train, seed=7)
    b = train_model(cfg, FAST, digits.train, seed=7)
    c = train_model(cfg, FAST, digits.train, seed=8)
    assert states_equal(a.final_state, b.final_state)
    assert not states_equal(a.final_state, c.final_state)


def test_training_does_not_touch_global_rng(digits):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_model(LogRegConfig(), FAST, digits.train, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_checkpoint_metadata(digits):
    result = train_model(LogRegConfig(), FAST, digits.train, seed=0)
    steps_per_epoch = -(-len(digits.train) // FAST.batch_size)
    total = steps_per_epoch * FAST.epochs
    assert [c.step for c in result.checkpoints] == checkpoint_steps(total, 3)
    assert result.checkpoints[-1].step == total
    assert sum(c.segment_steps for c in result.checkpoints) == total
    for c in result.checkpoints:
        assert c.lr == pytest.approx(FAST.lr_at(c.step - 1, total))
        assert c.epoch == pytest.approx(c.step / steps_per_epoch)
    # Checkpoints differ from each other: training moved the weights.
    assert not states_equal(result.checkpoints[0].state, result.checkpoints[-1].state)


def test_learning_rate_schedules():
    cos = TrainConfig(lr=1.0, schedule="cosine", warmup_steps=2)
    assert cos.lr_at(0, 10) == pytest.approx(0.5) and cos.lr_at(1, 10) == pytest.approx(1.0)
    assert cos.lr_at(2, 10) == pytest.approx(1.0) and cos.lr_at(10, 10) == pytest.approx(0.0, abs=1e-12)
    assert TrainConfig(lr=0.3, schedule="constant").lr_at(99, 100) == 0.3
    assert TrainConfig(lr=1.0, schedule="linear").lr_at(5, 10) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "field,value",
    [("optimizer", "rmsprop"), ("lr", -1.0), ("epochs", 0), ("momentum", 1.0), ("schedule", "step")],
)
def test_bad_train_config(field, value):
    with pytest.raises(ConfigError):
        TrainConfig(**{field: value})


def test_mask_selects_training_examples(digits):
    n = len(digits.train)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[: n // 2] = True
    half = train_model(LogRegConfig(), FAST, digits.train, seed=0, mask=mask.numpy())
    # Training on the masked half equals training on the subset itself.
    sub = train_model(LogRegConfig(), FAST, digits.train.subset(mask), seed=0)
    assert states_equal(half.final_state, sub.final_state)
    with pytest.raises(ConfigError, match="selects no example"):
        train_model(LogRegConfig(), FAST, digits.train, seed=0, mask=torch.zeros(n, dtype=torch.bool).numpy())


@pytest.mark.slow
def test_process_pool_equals_in_process(digits):
    cfg, data = MLPConfig(hidden=(16,)), digits.train
    masks = torch.rand(2, len(data), generator=torch.Generator().manual_seed(0)) < 0.5
    serial = retrain_on_subsets(cfg, FAST, data, masks.numpy(), [0, 1], digits.test, LocalExecutor(1))
    pooled = retrain_on_subsets(cfg, FAST, data, masks.numpy(), [0, 1], digits.test, LocalExecutor(2))
    assert serial.shape == (2, 2, len(digits.test), 10)
    assert torch.equal(serial, pooled)


def test_train_run_caches_and_resumes(digits, tmp_path):
    ws = Workspace(tmp_path / "ws")
    calls = []

    class CountingExecutor(LocalExecutor):
        def map(self, fn, jobs, progress=None, on_result=None):
            calls.append(len(jobs))
            return super().map(fn, jobs, progress, on_result)

    ex = CountingExecutor(1)
    first = train_run(digits, LogRegConfig(), FAST, [0], ws, ex)
    # A larger run reuses seed 0 and trains only seed 1 (resume from finished seeds).
    second = train_run(digits, LogRegConfig(), FAST, [0, 1], ws, ex)
    again = train_run(digits, LogRegConfig(), FAST, [0, 1], ws, ex)
    assert calls == [1, 1, 0]
    assert states_equal(first.checkpoints[0][-1].state, second.checkpoints[0][-1].state)
    loaded = load_run(again.key, ws)
    assert loaded.seeds == (0, 1) and loaded.metrics[1]["test_acc"] > 0.8
    assert [c.info() for c in loaded.checkpoints[1]] == [c.info() for c in second.checkpoints[1]]
    probs = loaded.predict(digits.test, seed=1)
    assert probs.shape == (len(digits.test), 10)
    assert torch.allclose(probs.sum(1), torch.ones(len(digits.test)), atol=1e-5)
    assert [m["key"] for m in ws.list_runs()][0] in {first.key, second.key}
