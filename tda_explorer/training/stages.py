"""Multi-stage runs: a model trained in stages (e.g. pre-train on part A, then fine-tune on part B).

A `StagedConfig` is a sequence of `Stage`s, each with its own `TrainConfig` and a boolean mask over the
training set (the examples that stage trains on). Stage k starts from the final weights of stage k-1
(`train_model(init_state=...)`) with a fresh optimizer (momentum restarts) and the same seed; its
checkpoints carry `stage = k` and a `step` counted from the start of the first stage. The last
checkpoint of a stage is the stage boundary Source puts a segment boundary at.

`train_stages` trains (or reuses) one pipeline per seed and returns a `TrainedRun` whose `stages` field
holds the StagedConfig, so attributors and evaluations read it like any run. A `StagedConfig` also works
wherever a `TrainConfig` drives *retraining* (`retrain_on_subsets`, hence LDS ground truth, pruning and
counterfactual tests): the whole pipeline is retrained, each stage on its examples inside the subset.

Caching: each seed's pipeline is one "models" artifact keyed by {dataset, model, stages, seed}; the run
artifact ("runs", config {dataset, model, stages, seeds}) stores the stage masks as `stage_masks.npy`.
Masks enter keys as a SHA-256 digest of their bits.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.errors import ArtifactError, ConfigError
from tda_explorer.models import ModelConfig, model_config_from_dict
from tda_explorer.store import Workspace, load_array, require_workspace
from tda_explorer.training.artifacts import load_seed, run_summary, store_run
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.executor import Executor
from tda_explorer.training.runs import (
    TrainedRun,
    TrainJob,
    check_run_seeds,
    run_meta_fields,
    train_seeds,
)
from tda_explorer.training.trainer import Checkpoint, Progress, TrainResult, train_model


def mask_digest(mask: np.ndarray) -> str:
    """SHA-256 (16 hex chars) of a boolean mask's length and bits (goes into artifact keys)."""
    mask = np.asarray(mask, dtype=bool)
    h = hashlib.sha256(str(len(mask)).encode())
    h.update(np.packbits(mask).tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Stage:
    """One stage of a pipeline.

    Args:
        train_config: how this stage trains (its own lr schedule, epochs, optimizer, weight decay).
        mask: bool `[n_train]` over the run's training set, True = trained on in this stage; None = all.
        name: a label (e.g. "pretrain", "finetune").
    """

    train_config: TrainConfig
    mask: np.ndarray | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.train_config, TrainConfig):
            raise ConfigError(f"a stage needs a TrainConfig, got {type(self.train_config).__name__}.")
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.ndim != 1 or mask.dtype != bool:
                raise ConfigError(f"a stage mask must be a 1-D boolean array, got {mask.dtype} {mask.shape}.")
            if not mask.any():
                raise ConfigError(f"stage {self.name!r}: the mask selects no training example.")
            object.__setattr__(self, "mask", mask.copy())


@dataclass(frozen=True, eq=False)
class StagedConfig:
    """A training pipeline: stages run in order, each from the previous stage's final weights.

    Args:
        stages: the stages, first to last (at least one).
    """

    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        if not stages or not all(isinstance(s, Stage) for s in stages):
            raise ConfigError("a StagedConfig needs a non-empty sequence of Stage objects.")
        lengths = {len(s.mask) for s in stages if s.mask is not None}
        if len(lengths) > 1:
            raise ConfigError(f"stage masks must all have the same length, got lengths {sorted(lengths)}.")
        object.__setattr__(self, "stages", stages)

    def __len__(self) -> int:
        return len(self.stages)

    def train_job(self, job: TrainJob) -> TrainResult:
        """Run one `TrainJob` through the whole pipeline, each stage restricted to the job's mask."""
        return train_staged_model(job.model_config, self, job.data, job.seed, job.mask, job.eval_sets)

    def masks(self, n_train: int) -> np.ndarray:
        """Bool `[n_stages, n_train]`: row k = examples stage k trains on (None masks become all True)."""
        out = np.ones((len(self.stages), n_train), dtype=bool)
        for k, s in enumerate(self.stages):
            if s.mask is not None:
                if len(s.mask) != n_train:
                    raise ConfigError(
                        f"stage {k} ({s.name!r}) has a mask of length {len(s.mask)}, "
                        f"the training set has {n_train} examples."
                    )
                out[k] = s.mask
        return out

    def to_dict(self) -> dict:
        """JSON-able identity (configs, names, mask digests), used in artifact keys."""
        return {
            "stages": [
                {
                    "name": s.name,
                    "train": s.train_config.to_dict(),
                    "mask": None if s.mask is None else mask_digest(s.mask),
                    "n_selected": None if s.mask is None else int(s.mask.sum()),
                }
                for s in self.stages
            ]
        }

    @property
    def last(self) -> TrainConfig:
        """The last stage's TrainConfig (what `TrainedRun.train_config` holds for a staged run)."""
        return self.stages[-1].train_config


def train_staged_model(
    model_config: ModelConfig,
    staged: StagedConfig,
    data: ExampleSet,
    seed: int,
    mask: np.ndarray | torch.Tensor | None = None,
    eval_sets: dict[str, ExampleSet] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the pipeline with `seed`; stage k trains on `stage_k.mask & mask` from stage k-1's weights.

    Args:
        mask: optional bool `[len(data)]` restricting every stage (subset retraining, leave-one-out).
        eval_sets: ExampleSets whose final logits are returned (from the last stage's model).

    Returns:
        TrainResult with the checkpoints of all stages in order (`stage` set, `step` cumulative).

    Raises:
        ConfigError: a stage has no example left inside `mask`.
    """
    start = time.perf_counter()
    stage_masks = staged.masks(len(data))
    if mask is not None:
        outer = np.asarray(mask.numpy() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
        if outer.shape != (len(data),):
            raise ConfigError(f"training mask has length {outer.size}, the data has {len(data)} examples.")
        stage_masks = stage_masks & outer
    checkpoints: list[Checkpoint] = []
    losses: list[float] = []
    state = None
    result = None
    for k, stage in enumerate(staged.stages):
        if not stage_masks[k].any():
            raise ConfigError(f"stage {k} ({stage.name!r}) has no training example inside the mask.")
        last = k == len(staged.stages) - 1

        def stage_progress(done: int, total: int, msg: str, k: int = k) -> None:
            if progress is not None:
                progress(done, total, f"stage {k + 1}/{len(staged.stages)}: {msg}")

        result = train_model(
            model_config,
            stage.train_config,
            data,
            seed,
            stage_masks[k],
            eval_sets if last else None,
            stage_progress,
            init_state=state,
        )
        offset = checkpoints[-1].step if checkpoints else 0
        for c in result.checkpoints:
            c.step += offset
            c.stage = k
        checkpoints += result.checkpoints
        losses += result.epoch_losses
        state = result.final_state
    assert result is not None
    return TrainResult(seed, checkpoints, time.perf_counter() - start, losses, result.eval_logits)


def _staged_seed_config(splits: DatasetSplits, model_config: ModelConfig, staged: StagedConfig, seed: int):
    return {"dataset": splits.spec, "model": model_config.to_dict(), **staged.to_dict(), "seed": seed}


def staged_run_config(splits: DatasetSplits, model_config: ModelConfig, staged: StagedConfig, seeds) -> dict:
    """The config dict that keys a staged run artifact."""
    return {
        "dataset": splits.spec,
        "model": model_config.to_dict(),
        **staged.to_dict(),
        "seeds": [int(s) for s in seeds],
    }


def train_stages(
    splits: DatasetSplits,
    model_config: ModelConfig,
    stages: StagedConfig | Sequence[Stage],
    seeds: Sequence[int],
    workspace: Workspace | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> TrainedRun:
    """Train (or reuse from the workspace) the staged pipeline once per seed; returns the TrainedRun.

    Args:
        splits: the dataset; stage masks index `splits.train`.
        stages: a StagedConfig or a sequence of Stages.
        seeds: one pipeline per seed (every stage uses that seed for init and batch order).

    Returns:
        A TrainedRun with `stages` set, `train_config` = the last stage's, checkpoints of all stages per
        seed, and metrics of the final models.
    """
    staged = stages if isinstance(stages, StagedConfig) else StagedConfig(tuple(stages))
    masks = staged.masks(len(splits.train))
    ws = require_workspace(workspace, "train_stages")
    seeds = check_run_seeds(seeds)
    checkpoints, metrics = train_seeds(
        splits,
        model_config,
        staged,
        seeds,
        lambda s: _staged_seed_config(splits, model_config, staged, s),
        ws,
        executor,
        progress,
    )
    cfg = staged_run_config(splits, model_config, staged, seeds)
    return TrainedRun(
        store_run(ws, cfg, run_summary(splits, metrics), {"stage_masks": masks}),
        splits.spec,
        model_config,
        staged.last,
        seeds,
        splits.train.input_shape,
        splits.train.n_classes,
        checkpoints,
        metrics,
        stages=StagedConfig(
            tuple(Stage(s.train_config, masks[k], s.name) for k, s in enumerate(staged.stages))
        ),
    )


def load_staged_run(key: str, workspace: Workspace | None = None) -> TrainedRun:
    """A staged TrainedRun from its run key (`load_run` calls this for runs with stages)."""
    ws = require_workspace(workspace, "load_staged_run")
    cfg, seeds, extra = run_meta_fields(key, ws.meta("runs", key))
    masks = load_array(ws.path("runs", key) / "stage_masks.npy").astype(bool)
    if len(masks) != len(cfg["stages"]):
        raise ArtifactError(f"staged run {key}: {len(masks)} stored masks for {len(cfg['stages'])} stages.")
    staged = StagedConfig(
        tuple(
            Stage(TrainConfig.from_dict(st["train"]), masks[k], st["name"])
            for k, st in enumerate(cfg["stages"])
        )
    )
    checkpoints, metrics = {}, {}
    for s in seeds:
        seed_cfg = {"dataset": cfg["dataset"], "model": cfg["model"], **staged.to_dict(), "seed": s}
        checkpoints[s], metrics[s] = load_seed(ws, seed_cfg)
    return TrainedRun(
        key,
        cfg["dataset"],
        model_config_from_dict(cfg["model"]),
        staged.last,
        seeds,
        tuple(extra["input_shape"]),
        int(extra["n_classes"]),
        checkpoints,
        metrics,
        stages=staged,
    )


def run_training_config(run: TrainedRun) -> TrainConfig | StagedConfig:
    """What retrains the run's model: its StagedConfig for a staged run, else its TrainConfig."""
    return run.stages if run.stages is not None else run.train_config
