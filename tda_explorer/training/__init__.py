"""Seeded training, multi-seed runs, subset retraining and executors."""

from __future__ import annotations

from tda_explorer.training.config import TrainConfig, default_train_config
from tda_explorer.training.executor import Executor, LocalExecutor
from tda_explorer.training.imported import UserTrainFn, import_run
from tda_explorer.training.imported_hf import import_hf_run
from tda_explorer.training.loading import load_run
from tda_explorer.training.runs import (
    TrainedRun,
    TrainJob,
    check_run_seeds,
    retrain_on_subsets,
    run_train_job,
    train_run,
)
from tda_explorer.training.stages import (
    Stage,
    StagedConfig,
    load_staged_run,
    run_training_config,
    train_staged_model,
    train_stages,
)
from tda_explorer.training.trainer import (
    Checkpoint,
    Progress,
    TrainResult,
    load_model,
    predict_logits,
    train_model,
)

__all__ = [
    "Checkpoint",
    "Executor",
    "LocalExecutor",
    "Progress",
    "Stage",
    "StagedConfig",
    "TrainConfig",
    "TrainJob",
    "TrainResult",
    "TrainedRun",
    "UserTrainFn",
    "check_run_seeds",
    "default_train_config",
    "import_hf_run",
    "import_run",
    "load_model",
    "load_run",
    "load_staged_run",
    "predict_logits",
    "retrain_on_subsets",
    "run_train_job",
    "run_training_config",
    "train_model",
    "train_run",
    "train_staged_model",
    "train_stages",
]
