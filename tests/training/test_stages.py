"""Multi-stage runs: stage chaining, stage indices, masks, caching, load_run, pipeline retraining, LDS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_explorer.data import DatasetSplits, load_digits_splits
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation import LDSConfig, compute_lds_truth
from tda_explorer.models import LogRegConfig
from tda_explorer.store import Workspace
from tda_explorer.training import (
    LocalExecutor,
    Stage,
    StagedConfig,
    TrainConfig,
    load_run,
    retrain_on_subsets,
    run_training_config,
    train_model,
    train_staged_model,
    train_stages,
)

N = 120
PRE = TrainConfig(optimizer="sgd", lr=0.2, epochs=2, batch_size=32, checkpoints=2, weight_decay=1e-3)
FINE = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.5, epochs=2, batch_size=16, checkpoints=3)


@pytest.fixture(scope="module")
def tiny() -> DatasetSplits:
    s = load_digits_splits(seed=0)
    return DatasetSplits(
        train=s.train.subset(np.arange(N)),
        val=s.val.subset(np.arange(20)),
        test=s.test.subset(np.arange(20)),
        spec={**s.spec, "options": {**s.spec["options"], "tiny": N}},
    )


@pytest.fixture(scope="module")
def staged() -> StagedConfig:
    part_a = np.arange(N) < 70  # pre-train on A, fine-tune on B (disjoint)
    return StagedConfig((Stage(PRE, part_a, "pretrain"), Stage(FINE, ~part_a, "finetune")))


class CountingExecutor:
    def __init__(self) -> None:
        self.inner, self.jobs = LocalExecutor(workers=1), []

    def map(self, fn, jobs, progress=None, on_result=None):
        self.jobs.extend(jobs)
        return self.inner.map(fn, jobs, progress, on_result)


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stages_chain_from_previous_weights(tiny, staged):
    result = train_staged_model(LogRegConfig(), staged, tiny.train, seed=3, eval_sets={"test": tiny.test})
    masks = staged.masks(N)
    first = train_model(LogRegConfig(), PRE, tiny.train, 3, masks[0])
    second = train_model(
        LogRegConfig(), FINE, tiny.train, 3, masks[1], {"test": tiny.test}, init_state=first.final_state
    )
    assert [c.stage for c in result.checkpoints] == [0, 0, 1, 1, 1]
    assert same_state(result.checkpoints[1].state, first.final_state)
    assert same_state(result.final_state, second.final_state)
    torch.testing.assert_close(result.eval_logits["test"], second.eval_logits["test"])
    # steps are cumulative over stages; segment steps restart at the stage boundary
    steps = [c.step for c in result.checkpoints]
    assert steps == sorted(steps) and steps[-1] == first.checkpoints[-1].step + second.checkpoints[-1].step
    assert sum(c.segment_steps for c in result.checkpoints[2:]) == second.checkpoints[-1].step
    assert result.checkpoints[2].segment_mean_lr == pytest.approx(second.checkpoints[0].segment_mean_lr)


def test_outer_mask_restricts_every_stage(tiny, staged):
    keep = np.ones(N, dtype=bool)
    keep[[0, 100]] = False  # one example of each stage
    masked = train_staged_model(LogRegConfig(), staged, tiny.train, 0, mask=keep)
    chained = StagedConfig(tuple(Stage(s.train_config, s.mask & keep, s.name) for s in staged.stages))
    assert same_state(
        masked.final_state, train_staged_model(LogRegConfig(), chained, tiny.train, 0).final_state
    )
    with pytest.raises(ConfigError, match="no training example"):
        train_staged_model(LogRegConfig(), staged, tiny.train, 0, mask=staged.masks(N)[0])


def test_train_stages_caches_and_loads(tmp_path, tiny, staged):
    ws = Workspace(tmp_path)
    ex = CountingExecutor()
    run = train_stages(tiny, LogRegConfig(), staged, [0, 1], ws, ex)
    assert len(ex.jobs) == 2 and run.stages is not None and run.train_config == FINE
    again = train_stages(tiny, LogRegConfig(), list(staged.stages), [0, 1], ws, ex)
    assert len(ex.jobs) == 2 and again.key == run.key  # reused, nothing retrained
    loaded = load_run(run.key, ws)
    assert loaded.stages is not None and len(loaded.stages) == 2
    np.testing.assert_array_equal(loaded.stages.masks(N), staged.masks(N))
    assert [s.name for s in loaded.stages.stages] == ["pretrain", "finetune"]
    assert [c.stage for c in loaded.checkpoints[1]] == [0, 0, 1, 1, 1]
    assert same_state(loaded.checkpoints[1][-1].state, run.checkpoints[1][-1].state)
    assert isinstance(run_training_config(loaded), StagedConfig)
    assert 0 <= loaded.metrics[0]["test_acc"] <= 1
    # another mask is another pipeline
    other = StagedConfig((Stage(PRE, np.arange(N) < 60), Stage(FINE, np.arange(N) >= 60)))
    assert train_stages(tiny, LogRegConfig(), other, [0], ws, ex).key != run.key


def test_retraining_and_lds_truth_run_the_whole_pipeline(tmp_path, tiny, staged):
    masks = np.ones((2, N), dtype=bool)
    masks[0, :30] = False
    masks[1, 80:] = False
    one = LocalExecutor(workers=1)
    logits = retrain_on_subsets(LogRegConfig(), staged, tiny.train, masks, [0], tiny.test, one)
    direct = train_staged_model(LogRegConfig(), staged, tiny.train, 0, masks[0], {"test": tiny.test})
    torch.testing.assert_close(logits[0, 0], direct.eval_logits["test"])
    config = LDSConfig(n_subsets=3, alpha=0.5, seeds=(0,), subset_seed=1)
    truth = compute_lds_truth(tiny.train, tiny.test, LogRegConfig(), staged, config, Workspace(tmp_path), one)
    subset0 = train_staged_model(LogRegConfig(), staged, tiny.train, 0, truth.masks[0], {"test": tiny.test})
    want = torch.nn.functional.cross_entropy(
        subset0.eval_logits["test"].double(), tiny.test.labels, reduction="none"
    )
    np.testing.assert_allclose(truth.losses[0], want.numpy(), rtol=1e-6)


def test_bad_stages_are_config_errors():
    with pytest.raises(ConfigError):
        Stage(PRE, np.zeros(5, dtype=bool))
    with pytest.raises(ConfigError):
        Stage(PRE, np.ones(5))  # not boolean
    with pytest.raises(ConfigError):
        StagedConfig(())
    with pytest.raises(ConfigError):
        StagedConfig((Stage(PRE, np.ones(4, dtype=bool)), Stage(FINE, np.ones(5, dtype=bool))))
    with pytest.raises(ConfigError):
        StagedConfig((Stage(PRE, np.ones(4, dtype=bool)),)).masks(5)
