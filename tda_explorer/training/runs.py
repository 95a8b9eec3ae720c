"""Multi-seed training runs and subset retraining, cached in the workspace.

A run = (dataset spec, model config, training config, seeds). Each seed's model is
its own artifact (kind "models"), so an interrupted run resumes from the seeds it
finished; the run artifact (kind "runs") is written last and lists them.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.errors import ArtifactError, ConfigError
from tda_explorer.models import ModelConfig, model_config_from_dict, prepare_inputs
from tda_explorer.models.imported import importable
from tda_explorer.models.tasks import task_of
from tda_explorer.models.text_cache import states_stored_in
from tda_explorer.store import Workspace, default_workspace, require_workspace
from tda_explorer.training.artifacts import load_seed, run_summary, save_seed, store_run
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.executor import Executor, LocalExecutor, job_progress
from tda_explorer.training.trainer import (
    Checkpoint,
    Progress,
    TrainResult,
    load_model,
    predict_logits,
    train_model,
)


class JobRunner(Protocol):
    """A training recipe that runs a `TrainJob` itself (`training.stages.StagedConfig`, the user's
    `training.imported.UserTrainFn`); a plain `TrainConfig` runs the package's trainer."""

    def to_dict(self) -> dict: ...

    def train_job(self, job: TrainJob) -> TrainResult: ...


@dataclass(frozen=True)
class TrainJob:
    """One training job for an Executor (picklable); `train_config` may be a multi-stage `StagedConfig`."""

    model_config: ModelConfig
    train_config: TrainConfig | JobRunner
    data: ExampleSet
    seed: int
    mask: np.ndarray | None = None
    eval_sets: dict[str, ExampleSet] = field(default_factory=dict)
    keep_checkpoints: bool = True


def run_train_job(job: TrainJob) -> TrainResult:
    """Executor entry point: train; drop the weights when only eval logits are wanted.

    A `train_config` with its own `train_job(job)` (a multi-stage `StagedConfig`, a user's `UserTrainFn`)
    runs the job itself; a `TrainConfig` runs the package's trainer (in-process, the executor's
    `job_progress()` moves the bar epoch by epoch).
    """
    if hasattr(job.train_config, "train_job"):
        result = job.train_config.train_job(job)
    else:
        result = train_model(
            job.model_config, job.train_config, job.data, job.seed, job.mask, job.eval_sets, job_progress()
        )
    if not job.keep_checkpoints:
        result.checkpoints = []
    return result


def weights_hash(states: Sequence[dict[str, torch.Tensor]]) -> str:
    """SHA-256 (16 hex) of state dicts: names, dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for state in states:
        for name in sorted(state):
            t = state[name].detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        h.update(b"\0")
    return h.hexdigest()[:16]


def default_executor(model_config: ModelConfig, train_config=None) -> Executor:
    """A LocalExecutor; in-process when a job's model factory or training loop can only be found in this
    process (a function defined in a script or notebook cannot be sent to a worker)."""
    names = [getattr(model_config, "factory", None), getattr(train_config, "name", None)]
    if any(n is not None and not importable(n) for n in names):
        return LocalExecutor(workers=1)
    return LocalExecutor()


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
        imported: for a run brought in with `import_run`, what was imported (`factory`, per-seed
            `weights` hashes, the declared `weight_decay`); None for runs the package trained. Its
            `train_config` is the recipe given at import (a TrainConfig or a `UserTrainFn`), or None.
    """

    key: str
    dataset: dict
    model_config: ModelConfig
    train_config: TrainConfig | None
    seeds: tuple[int, ...]
    input_shape: tuple[int, ...]
    n_classes: int
    checkpoints: dict[int, list[Checkpoint]] = field(repr=False)
    metrics: dict[int, dict]
    stages: Any = None  # a `training.stages.StagedConfig` for multi-stage runs
    imported: dict | None = None

    @property
    def weight_decay(self) -> float:
        """The L2 coefficient of the training objective (`wd/2 ||theta||^2`), added to curvatures.

        The training config's for runs the package trained; for imported runs the `weight_decay` declared
        at import (0 unless given: the package cannot know what the user's loop regularised).
        """
        if self.imported is not None:
            return float(self.imported.get("weight_decay", 0.0))
        return float(self.train_config.weight_decay)

    def require_recipe(self, what: str):
        """The run's training recipe (`train_config`); ConfigError naming what to provide when it has none."""
        if self.train_config is None:
            raise ConfigError(
                f"{what} retrains the model or reads its training schedule, and this imported run has no "
                "training recipe. Import it again with train_config=TrainConfig(...) (the package's trainer) "
                "or train_fn=fn (your loop: fn(model_factory, train_examples, seed) -> state_dict); CLI: "
                "import --train-fn pkg.mod:fn."
            )
        return self.train_config

    def fingerprint(self) -> str:
        """SHA-256 (16 hex) of every checkpoint's weights, in seed and checkpoint order (keys cached scores).

        Computed once per run object.
        """
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            cached = weights_hash([c.state for s in self.seeds for c in self.checkpoints[s]])
            self._fingerprint = cached
        return cached

    def select_seeds(self, seeds: str | int | Sequence[int]) -> tuple[int, ...]:
        """The run seeds chosen by `seeds`: "first", "all", an int n (first n), or explicit seeds."""
        if seeds == "first":
            return self.seeds[:1]
        if seeds == "all" or seeds is None:
            return tuple(self.seeds)
        if isinstance(seeds, int):
            if not 1 <= seeds <= len(self.seeds):
                raise ConfigError(
                    f"asked for {seeds} models but the run has {len(self.seeds)} seeds {list(self.seeds)}."
                )
            return tuple(self.seeds[:seeds])
        chosen = tuple(int(s) for s in seeds)
        unknown = [s for s in chosen if s not in self.seeds]
        if unknown or not chosen:
            raise ConfigError(
                f"seeds {unknown or chosen} are not in the run; its seeds are {list(self.seeds)}."
            )
        return chosen

    def model(self, seed: int | None = None, checkpoint: int = -1) -> nn.Module:
        """The model of `seed` (default: the first) at checkpoint index `checkpoint` (default final), eval mode."""
        seed = self.seeds[0] if seed is None else seed
        if seed not in self.checkpoints:
            raise ArtifactError(f"run {self.key} has no seed {seed}; its seeds are {list(self.seeds)}.")
        state = self.checkpoints[seed][checkpoint].state
        return load_model(self.model_config, self.input_shape, self.n_classes, state)

    def predict(self, examples: ExampleSet, seed: int | None = None) -> torch.Tensor:
        """Class probabilities `[n, C]` (float32) of the final model of `seed` (default: the first); the
        outputs themselves for a regression model."""
        model = self.model(seed)
        outputs = predict_logits(model, prepare_inputs(model, examples.inputs))
        return outputs if task_of(model) == "regression" else torch.softmax(outputs, dim=1)

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


def check_run_seeds(seeds: Sequence[int] | int) -> tuple[int, ...]:
    """Validate the seeds of a run: at least one, each a distinct integer >= 0.

    The one check behind `train_run`, `train_stages`, the CLI's `train --seeds` and the app's setup page.

    Args:
        seeds: The seeds (an int is one seed).

    Returns:
        The seeds as a tuple of ints.

    Raises:
        ConfigError: No seed, a repeated seed, or one that is not an integer >= 0.
    """
    if isinstance(seeds, numbers.Integral):
        seeds = (seeds,)
    try:
        given = list(seeds)
    except TypeError:
        raise ConfigError(f"seeds must be a list of integers >= 0, got {seeds!r:.80}.") from None
    if not given:
        raise ConfigError("a run needs at least one seed (got none): train with --seeds 1 or more.")
    for s in given:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ConfigError(f"each seed must be an integer >= 0, got {s!r:.40} in {given!r:.80}.")
    out = tuple(int(s) for s in given)
    if len(set(out)) != len(out):
        raise ConfigError(f"seeds must be distinct, got {list(out)}.")
    return out


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
    executor = executor or default_executor(model_config, config)
    todo = [s for s in seeds if not ws.exists("models", seed_config(s))]
    evals = {"train": splits.train, "val": splits.val, "test": splits.test}
    jobs = [TrainJob(model_config, config, splits.train, s, eval_sets=evals) for s in todo]
    done_before = len(seeds) - len(todo)
    if progress is not None and done_before:
        progress(done_before, len(seeds), f"{done_before} seed(s) reused from the workspace")

    def save_as_done(result: TrainResult) -> None:
        metrics = {f"{k}_acc": accuracy(result.eval_logits[k], es.labels) for k, es in evals.items()}
        save_seed(ws, seed_config(result.seed), result, metrics | {"seconds": result.seconds})

    def seed_progress(done: int, total: int, msg: str) -> None:
        if progress is not None:
            progress(done_before + done, len(seeds), msg)

    with states_stored_in(ws):  # a text model's frozen states, shared by the seeds' workers
        executor.map(run_train_job, jobs, seed_progress, on_result=lambda i, result: save_as_done(result))
    loaded = {s: load_seed(ws, seed_config(s)) for s in seeds}
    return {s: c for s, (c, _) in loaded.items()}, {s: m for s, (_, m) in loaded.items()}


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

    Raises:
        ConfigError: `seeds` is empty, repeats a seed or holds a non-integer (see `check_run_seeds`).
    """
    seeds = check_run_seeds(seeds)
    ws = default_workspace(workspace)
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
    key = store_run(ws, cfg, run_summary(splits, metrics))
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


def run_meta_fields(key: str, meta: dict) -> tuple[dict, tuple[int, ...], dict]:
    """The config, seeds and extra of a "runs" meta.json, checked; ArtifactError naming the fix otherwise.

    Used by `load_native_run`, `load_staged_run` and the CLI's `runs` listing, so that a run stored without seeds
    (before `--seeds 0` was refused) or with a hand-edited meta fails with a message, not a traceback.
    """
    fix = f"delete the folder runs/{key} in the workspace and train the run again (trained seeds are reused)"
    cfg, extra = meta.get("config"), meta.get("extra")
    if not isinstance(cfg, dict) or not isinstance(extra, dict):
        raise ArtifactError(
            f"run {key}: meta.json has no {'config' if not isinstance(cfg, dict) else 'extra'}; {fix}."
        )
    missing = [k for k in ("dataset", "model", "seeds") if k not in cfg]
    missing += [k for k in ("input_shape", "n_classes", "metrics") if k not in extra]
    if missing:
        raise ArtifactError(f"run {key}: meta.json lacks {missing}; {fix}.")
    try:
        seeds = check_run_seeds(cfg["seeds"])
    except ConfigError as exc:
        raise ArtifactError(
            f"run {key} is unusable: {exc} Delete the folder runs/{key} in the workspace."
        ) from None
    return cfg, seeds, extra


def load_native_run(key: str, workspace: Workspace | None = None) -> TrainedRun:
    """A TrainedRun the package trained, from its run key (`training.loading.load_run` loads any run).

    Raises:
        ArtifactError: The run or one of its seeds' models is missing, corrupt or inconsistent (the
            message names the artifact and how to recompute it).
    """
    ws = require_workspace(workspace, "load_native_run")
    meta = ws.meta("runs", key)
    cfg, seeds, extra = run_meta_fields(key, meta)
    if "train" not in cfg:
        raise ArtifactError(f"run {key}: meta.json config lacks 'train'; delete runs/{key} and train again.")
    model_config = model_config_from_dict(cfg["model"])
    train_config = TrainConfig.from_dict(cfg["train"])
    checkpoints, metrics = {}, {}
    for s in seeds:
        seed_cfg = {"dataset": cfg["dataset"], "model": cfg["model"], "train": cfg["train"], "seed": s}
        checkpoints[s], metrics[s] = load_seed(ws, seed_cfg)
    return TrainedRun(
        key,
        cfg["dataset"],
        model_config,
        train_config,
        seeds,
        tuple(extra["input_shape"]),
        int(extra["n_classes"]),
        checkpoints,
        metrics,
    )


def retrain_on_subsets(
    model_config: ModelConfig,
    train_config: TrainConfig | JobRunner,
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
    executor = executor or default_executor(model_config, train_config)
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
