"""Progress moves within a single long job, and a cancel scope stops training cooperatively (Cancelled),
keeping the seeds that finished so a second call resumes."""

from __future__ import annotations

import threading

import pytest

import tda_explorer.training.trainer as trainer
from tda_explorer.data import DatasetSpec, load_dataset
from tda_explorer.errors import Cancelled
from tda_explorer.models import default_model_config
from tda_explorer.progress import cancel_scope, cancellable, check_cancelled
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainConfig, train_run

CFG = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, epochs=2, batch_size=16)


def test_one_job_reports_progress_within_its_epochs(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "PROGRESS_EVERY_S", 0.0)  # report at every step
    seen = []
    splits = load_dataset(DatasetSpec("digits"))
    train_run(splits, default_model_config("logreg"), CFG, [0], Workspace(tmp_path), LocalExecutor(1),
              lambda done, total, msg: seen.append((done, total, msg)))  # fmt: skip
    fractions = [d / t for d, t, _ in seen]
    assert len(seen) > 10 and fractions == sorted(fractions) and 0 < fractions[0] < 0.1
    assert any("step" in m for _, _, m in seen) and any("epoch 2 loss" in m for _, _, m in seen)


def test_cancel_stops_training_and_the_finished_seeds_are_reused(tmp_path):
    flag = threading.Event()
    splits = load_dataset(DatasetSpec("digits"))
    ws = Workspace(tmp_path)

    def progress(done, total, msg):
        if done >= 1:  # the first seed is done (and stored): ask to stop
            flag.set()

    with cancel_scope(flag), pytest.raises(Cancelled, match="kept in the workspace"):
        train_run(splits, default_model_config("logreg"), CFG, [0, 1, 2], ws, LocalExecutor(1),
                  cancellable(progress))  # fmt: skip
    seen = []
    train_run(splits, default_model_config("logreg"), CFG, [0, 1, 2], ws, LocalExecutor(1),
              lambda done, total, msg: seen.append(msg))  # fmt: skip
    assert "1 seed(s) reused from the workspace" in seen[0]
    check_cancelled()  # outside the scope: a no-op


def test_in_process_scope_keeps_nested_executors_in_this_process(monkeypatch):
    from tda_explorer.training.executor import LocalExecutor as Local
    from tda_explorer.training.executor import in_process

    monkeypatch.delenv("TDA_WORKERS", raising=False)
    assert Local().auto
    with in_process():
        inner = Local()
        assert (inner.workers, inner.auto) == (1, False)
    assert Local().auto
