"""Tiny fixtures for the evaluation tests: 200 sklearn-digits examples, logistic regression, few epochs."""

from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.data import DatasetSplits, load_digits_splits
from tda_explorer.models import LogRegConfig
from tda_explorer.training import LocalExecutor, TrainConfig

N_TRAIN, N_QUERY = 200, 40


class RecordingExecutor:
    """A one-process executor that records every job and can fail on its n-th `map` call (an interruption)."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.inner = LocalExecutor(workers=1)
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.jobs: list = []

    def map(self, fn, jobs, progress=None, on_result=None):
        self.calls += 1
        if self.fail_on_call is not None and self.calls >= self.fail_on_call:
            raise RuntimeError("simulated interruption")
        self.jobs.extend(jobs)
        return self.inner.map(fn, jobs, progress, on_result)


@pytest.fixture(scope="session")
def tiny() -> DatasetSplits:
    splits = load_digits_splits(seed=0)
    return DatasetSplits(
        train=splits.train.subset(np.arange(N_TRAIN)),
        val=splits.val.subset(np.arange(N_QUERY)),
        test=splits.test.subset(np.arange(N_QUERY)),
        spec={**splits.spec, "options": {**splits.spec["options"], "tiny": [N_TRAIN, N_QUERY]}},
    )


@pytest.fixture(scope="session")
def model_config() -> LogRegConfig:
    return LogRegConfig()


@pytest.fixture(scope="session")
def train_config() -> TrainConfig:
    return TrainConfig(
        optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=1e-3, epochs=5, batch_size=32, checkpoints=1
    )


@pytest.fixture(scope="session")
def recorder() -> type[RecordingExecutor]:
    """The RecordingExecutor class (call it to make one)."""
    return RecordingExecutor
