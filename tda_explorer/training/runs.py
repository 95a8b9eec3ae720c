"""Multi-seed training runs and subset retraining, cached in the workspace.

A run = (dataset spec, model config, training config, seeds). Each seed's model is
its own artifact (kind "models"), so an interrupted run resumes from the seeds it
finished; the run artifact (kind "runs") is written last and lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.errors import ArtifactError
from tda_explorer.models import ModelConfig, model_config_from_dict, prepare_inputs
from tda_explorer.store import Workspace, load_tensors, save_tensors
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.executor import Executor, LocalExecutor
from tda_explorer.training.trainer import (
    Checkpoint,
    Progress,
    TrainResult,
    load_model,
    predict_logits,
    train_model,
)

if TYPE_CHECKING:
    from tda_explorer.training.stages import StagedConfig


@dataclass(frozen=True)
class TrainJob:
    """One training job for an Executor (picklable); `train_config` may be a multi-stage `StagedConfig`."""

    model_config: ModelConfig
    train_config: TrainConfig | StagedConfig
    data: ExampleSet
    seed: int
    mask: np.ndarray | None = None
    eval_sets: dict[str, ExampleSet] = field(default_factory=dict)
    keep_checkpoints: bool = True


def run_train_job(job: TrainJob) -> TrainResult:
    """Executor entry point: train; drop the weights when only eval logits are wanted."""
    from tda_explorer.training.stages import StagedConfig, train_staged_model  # stages imports this module

    if isinstance(job.train_config, StagedConfig):  # the whole pipeline, each stage restricted to `mask`
        result = train_staged_model(
            job.model_config, job.train_config, job.data, job.seed, job.mask, job.eval_sets
        )
    else:  # in-process, the executor's job_progress() moves the bar epoch by epoch
        from tda_explorer.training.executor import job_progress

        result = train_model(
            job.model_config, job.train_config, job.data, job.seed, job.mask, job.eval_sets, job_progress()
        )
    if not job.keep_checkpoints:
        result.checkpoints = []
    return result


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


@dataclass
class TrainedRun:
    """A trained multi-seed run: configs plus, per seed, its checkpoints (last = final model).

    Attributes:
        key: the run's artifact key in the workspace.
        dataset: the dataset spec dict (`DatasetSpec.to_dict()`).
        metrics: per seed {"train_acc", "val_acc", "test_acc", "seconds"}.
        stages: for a multi-stage run (`training.stages.train_stages`), its stages (configs and training
            masks); None for a single-stage run. `train_config` is then the last stage's and every
            checkpoint records its `stage`.
    """

    key: str
    dataset: dict
    model_config: ModelConfig
    train_config: TrainConfig
    seeds: tuple[int, ...]
    input_shape: tuple[int, ...]
    n_classes: int
    checkpoints: dict[int, list[Checkpoint]] = field(repr=False)
    metrics: dict[int, dict]
    stages: StagedConfig | None = None

    def model(self, seed: int | None = None, checkpoint: int = -1) -> nn.Module:
        """The model of `seed` (default: the first) at checkpoint index `checkpoint` (default final), eval mode."""
        seed = self.seeds[0] if seed is None else seed
        if seed not in self.checkpoints:
            raise ArtifactError(f"run {self.key} has no seed {seed}; its seeds are {list(self.seeds)}.")
        state = self.checkpoints[seed][checkpoint].state
        return load_model(self.model_config, self.input_shape, self.n_classes, state)

    def predict(self, examples: ExampleSet, seed: int | None = None) -> torch.Tensor:
        """Class probabilities `[n, C]` (float32) of the final model of `seed` (default: the first)."""
        model = self.model(seed)
        return torch.softmax(predict_logits(model, prepare_inputs(model, examples.inputs)), dim=1)

    def mean_metric(self, name: str) -> float:
        return float(np.mean([m[name] for m in self.metrics.values()]))


def run_config(splits: DatasetSplits, model_config: ModelConfig, train_config: TrainConfig, seeds) -> dict:
    """The config dict that keys a run artifact."""
    return {
        "dataset": splits.spec,
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
        "seeds": [int(s) for s in seeds],
    }


def _seed_config(
    splits: DatasetSplits, model_config: ModelConfig, train_config: TrainConfig, seed: int
) -> dict:
    return {
        "dataset": splits.spec,
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
        "seed": seed,
    }


def _save_seed(ws: Workspace, cfg: dict, result: TrainResult, metrics: dict) -> None:
    infos = [c.info() for c in result.checkpoints]
    with ws.write("models", cfg, extra={"checkpoints": infos, "metrics": metrics}) as d:
        for i, c in enumerate(result.checkpoints):
            save_tensors(d, f"ckpt{i}", c.state)


def _load_seed(ws: Workspace, cfg: dict) -> tuple[list[Checkpoint], dict]:
    path = ws.open("models", cfg)
    meta = ws.meta("models", path.name)
    ckpts = [
        Checkpoint(state=load_tensors(path / f"ckpt{i}.pt"), **info)
        for i, info in enumerate(meta["extra"]["checkpoints"])
    ]
    return ckpts, meta["extra"]["metrics"]


def train_seeds(
    splits: DatasetSplits,
    model_config: ModelConfig,
    config,
    seeds: tuple[int, ...],
    seed_config: Callable[[int], dict],
    ws: Workspace,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> tuple[dict[int, list[Checkpoint]], dict[int, dict]]:
    """Train the seeds not yet in the workspace (artifact "models" keyed by `seed_config(seed)`), saving
    each as soon as it finishes so an interrupted run resumes from the finished seeds; load all.

    `config` is what a TrainJob runs (a TrainConfig, or a staged pipeline). Metrics per seed: accuracy on
    train/val/test (`<split>_acc`) and the training wall `seconds`. `progress` counts seeds.

    Returns:
        `({seed: checkpoints}, {seed: metrics})`.
    """
    executor = executor or LocalExecutor()
    todo = [s for s in seeds if not ws.exists("models", seed_config(s))]
    evals = {"train": splits.train, "val": splits.val, "test": splits.test}
    jobs = [TrainJob(model_config, config, splits.train, s, eval_sets=evals) for s in todo]
    done_before = len(seeds) - len(todo)
    if progress is not None and done_before:
        progress(done_before, len(seeds), f"{done_before} seed(s) reused from the workspace")

    def save_as_done(result: TrainResult) -> None:
        metrics = {f"{k}_acc": accuracy(result.eval_logits[k], es.labels) for k, es in evals.items()}
        _save_seed(ws, seed_config(result.seed), result, metrics | {"seconds": result.seconds})

    def seed_progress(done: int, total: int, msg: str) -> None:
        if progress is not None:
            progress(done_before + done, len(seeds), msg)

    executor.map(run_train_job, jobs, seed_progress, on_result=lambda i, result: save_as_done(result))
    loaded = {s: _load_seed(ws, seed_config(s)) for s in seeds}
    return {s: c for s, (c, _) in loaded.items()}, {s: m for s, (_, m) in loaded.items()}


def run_summary(splits: DatasetSplits, metrics: dict[int, dict]) -> dict:
    """The "runs" artifact's extra metadata: per-seed metrics, input shape and class count."""
    return {
        "metrics": {str(s): m for s, m in metrics.items()},
        "input_shape": list(splits.train.input_shape),
        "n_classes": splits.train.n_classes,
    }


def train_run(
    splits: DatasetSplits,
    model_config: ModelConfig,
    train_config: TrainConfig,
    seeds: Sequence[int],
    workspace: Workspace | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> TrainedRun:
    """Train (or reuse from the workspace) one model per seed; returns the TrainedRun.

    Seeds already in the workspace are loaded, not retrained; `progress(done, total, msg)` counts seeds.
    """
    ws = workspace or Workspace()
    seeds = tuple(int(s) for s in seeds)
    checkpoints, metrics = train_seeds(
        splits,
        model_config,
        train_config,
        seeds,
        lambda s: _seed_config(splits, model_config, train_config, s),
        ws,
        executor,
        progress,
    )
    cfg = run_config(splits, model_config, train_config, seeds)
    if not ws.exists("runs", cfg):
        with ws.write("runs", cfg, extra=run_summary(splits, metrics)):
            pass
    key = ws.key("runs", cfg)
    return TrainedRun(
        key,
        splits.spec,
        model_config,
        train_config,
        seeds,
        splits.train.input_shape,
        splits.train.n_classes,
        checkpoints,
        metrics,
    )


def load_run(key: str, workspace: Workspace | None = None) -> TrainedRun:
    """A TrainedRun from its run key (as printed by the CLI and listed by `Workspace.list_runs()`)."""
    ws = workspace or Workspace()
    meta = ws.meta("runs", key)
    cfg = meta["config"]
    if "stages" in cfg:
        from tda_explorer.training.stages import load_staged_run  # stages imports this module

        return load_staged_run(key, ws)
    model_config = model_config_from_dict(cfg["model"])
    train_config = TrainConfig.from_dict(cfg["train"])
    checkpoints, metrics = {}, {}
    for s in cfg["seeds"]:
        seed_cfg = {"dataset": cfg["dataset"], "model": cfg["model"], "train": cfg["train"], "seed": s}
        checkpoints[s], metrics[s] = _load_seed(ws, seed_cfg)
    extra = meta["extra"]
    return TrainedRun(
        key,
        cfg["dataset"],
        model_config,
        train_config,
        tuple(cfg["seeds"]),
        tuple(extra["input_shape"]),
        int(extra["n_classes"]),
        checkpoints,
        metrics,
    )


def retrain_on_subsets(
    model_config: ModelConfig,
    train_config: TrainConfig | StagedConfig,
    train: ExampleSet,
    masks: np.ndarray,
    seeds: Sequence[int],
    eval_set: ExampleSet,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Retrain on each boolean mask `[M, n_train]` with each seed; return eval logits `[M, R, n_eval, C]`.

    With a multi-stage `train_config` (`StagedConfig`) the whole pipeline is retrained, each stage on
    its own examples that are in the mask.
    """
    executor = executor or LocalExecutor()
    masks = np.asarray(masks, dtype=bool)
    jobs = [
        TrainJob(
            model_config,
            train_config,
            train,
            int(s),
            mask=m,
            eval_sets={"eval": eval_set},
            keep_checkpoints=False,
        )
        for m in masks
        for s in seeds
    ]
    results = executor.map(run_train_job, jobs, progress)
    logits = torch.stack([r.eval_logits["eval"] for r in results])
    return logits.view(len(masks), len(seeds), *logits.shape[1:])
