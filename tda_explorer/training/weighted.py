"""The trainer's loop with per-example data weights, and fixed-seed retraining built on it.

`train_model` minimises, at step t, the batch mean `(1/B_t) sum_{i in B_t} l_i`. Here every example
carries a weight `w_i` and step t uses `(1/B_t) sum_{i in B_t} w_i l_i` with the *same* batches
`B_t` as the unweighted run (same seed: same init, same permutation of the stage's examples per
epoch, same dropout masks, since every batch keeps its full size through the forward pass). `B_t` stays
the batch's original size whatever the weights, so weight 0 removes an example's term and nothing
else ("fixed-seed removal": the removed examples are masked out of their batches, the other examples
see exactly the updates they saw before, up to the changed weights). With `weights=None` the loss is
`F.cross_entropy(..., reduction="mean")` exactly as in `train_model`, so the result is bit-identical.

This is the counterfactual the `unrolled` attributor differentiates (d/dw_i at w = 1) and the one
the fixed-seed LDS ground truth (`evaluation.lds`, mode "fixed") retrains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import ModelConfig, build_model, prepare_inputs
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.executor import Executor, LocalExecutor
from tda_explorer.training.stages import StagedConfig
from tda_explorer.training.trainer import (
    Progress,
    make_optimizer,
    model_state,
    predict_logits,
    single_thread,
)


@dataclass(frozen=True)
class StagePlan:
    """One stage as the trainer runs it: its config and the indices `idx` of the examples it trains on."""

    config: TrainConfig
    idx: torch.Tensor

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.idx) // self.config.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs


def stage_plans(train_config: TrainConfig | StagedConfig, n_train: int) -> list[StagePlan]:
    """The stages of a (possibly multi-stage) recipe over `n_train` examples (one for a TrainConfig)."""
    if isinstance(train_config, StagedConfig):
        masks = train_config.masks(n_train)
        configs = [s.train_config for s in train_config.stages]
        return [
            StagePlan(c, torch.arange(n_train)[torch.from_numpy(m)])
            for c, m in zip(configs, masks, strict=True)
        ]
    if not isinstance(train_config, TrainConfig):
        raise ConfigError(f"expected a TrainConfig or StagedConfig, got {type(train_config).__name__}.")
    return [StagePlan(train_config, torch.arange(n_train))]


def stage_batches(plan: StagePlan, seed: int) -> list[torch.Tensor]:
    """The stage's batches in training order (int64 index tensors), drawn exactly as `sgd_steps` draws them."""
    shuffle = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    bs, out = plan.config.batch_size, []
    for _ in range(plan.config.epochs):
        order = plan.idx[torch.randperm(len(plan.idx), generator=shuffle)]
        out += [order[b * bs : (b + 1) * bs] for b in range(plan.steps_per_epoch)]
    return out


def init_model(
    model_config: ModelConfig,
    data: ExampleSet,
    seed: int,
    init_state: dict[str, torch.Tensor] | None,
    dtype: torch.dtype | None = None,
) -> tuple[nn.Module, torch.Tensor]:
    """`torch.manual_seed(seed)`, build, load `init_state` (as `train_model`); model and its inputs in `dtype`.

    Call inside `torch.random.fork_rng`: the global RNG is left where the trainer leaves it before its
    first step (dropout masks follow from it).
    """
    torch.manual_seed(seed)
    model = build_model(model_config, data.input_shape, data.n_classes)
    if dtype is not None:
        model = model.to(dtype)
    if init_state is not None:
        model.load_state_dict(init_state, strict=False)
    inputs = prepare_inputs(model, data.inputs)
    if dtype is not None and inputs.is_floating_point():
        inputs = inputs.to(dtype)
    return model, inputs


def train_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batch: torch.Tensor,
    lr: float,
    weights: torch.Tensor | None = None,
) -> float:
    """One optimizer step on `batch` at learning rate `lr` (as `sgd_steps`); returns the batch loss.

    Args:
        weights: `[n_train]` data weights (None = the trainer's unweighted mean, bit for bit).
    """
    for group in opt.param_groups:
        group["lr"] = lr
    logits = model(inputs[batch])
    if weights is None:
        loss = F.cross_entropy(logits, labels[batch])
    else:
        per = F.cross_entropy(logits, labels[batch], reduction="none")
        loss = (per * weights[batch].to(per)).sum() / len(batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.item())


def train_weighted(
    model_config: ModelConfig,
    train_config: TrainConfig | StagedConfig,
    data: ExampleSet,
    seed: int,
    weights: torch.Tensor | np.ndarray | None = None,
    dtype: torch.dtype | None = None,
    eval_sets: dict[str, ExampleSet] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train like `train_model` / `train_staged_model` with data weights `w` (see module docstring).

    Args:
        weights: `[len(data)]` per-example weights (None = all 1, the trainer's loss bit for bit).
        dtype: train in this floating dtype (None = the model's, float32); float64 for references.
        eval_sets: ExampleSets whose final logits `[n, C]` (eval mode) are returned: float32 as
            `train_model` gives them, or in `dtype` when one is given.

    Returns:
        `(final state, {name: logits})`, the state as `model_state` gives it.
    """
    w = None if weights is None else torch.as_tensor(np.asarray(weights), dtype=torch.float64)
    if w is not None and w.shape != (len(data),):
        raise ConfigError(f"weights have shape {tuple(w.shape)}, the data has {len(data)} examples.")
    state = None
    with single_thread():
        for plan in stage_plans(train_config, len(data)):
            with torch.random.fork_rng(devices=[]):
                model, inputs = init_model(model_config, data, seed, state, dtype)
                opt = make_optimizer(plan.config, [p for p in model.parameters() if p.requires_grad])
                model.train()
                for t, batch in enumerate(stage_batches(plan, seed)):
                    lr = plan.config.lr_at(t, plan.total_steps)
                    train_step(model, opt, inputs, data.labels, batch, lr, w)
            state = model_state(model)
        logits = {}
        for name, es in (eval_sets or {}).items():
            x = prepare_inputs(model, es.inputs)
            if dtype is None:
                logits[name] = predict_logits(model, x)
                continue
            model.eval()
            with torch.no_grad():
                logits[name] = model(x.to(dtype) if x.is_floating_point() else x)
    return state, logits


@dataclass(frozen=True)
class FixedSeedJob:
    """One fixed-seed retraining (picklable): examples outside `mask` get weight 0, the rest 1."""

    model_config: ModelConfig
    train_config: TrainConfig | StagedConfig
    data: ExampleSet
    seed: int
    mask: np.ndarray
    eval_sets: dict[str, ExampleSet] = field(default_factory=dict)


def run_fixed_seed_job(job: FixedSeedJob) -> torch.Tensor:
    """Executor entry point: the `eval` set's logits `[n_eval, C]` after fixed-seed training on the mask."""
    weights = np.asarray(job.mask, dtype=np.float64)
    _, logits = train_weighted(
        job.model_config, job.train_config, job.data, job.seed, weights, None, job.eval_sets
    )
    return logits["eval"]


def retrain_fixed_seed(
    model_config: ModelConfig,
    train_config: TrainConfig | StagedConfig,
    train: ExampleSet,
    masks: np.ndarray,
    seeds: Sequence[int],
    eval_set: ExampleSet,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Fixed-seed counterpart of `retrain_on_subsets`: eval logits `[M, R, n_eval, C]`.

    Each mask `[M, n_train]` is trained with each seed's own init, batches and dropout masks, the
    examples outside the mask weighted 0 inside their batches (see module docstring).
    """
    executor = executor or LocalExecutor()
    masks = np.asarray(masks, dtype=bool)
    jobs = [
        FixedSeedJob(model_config, train_config, train, int(s), m, {"eval": eval_set})
        for m in masks
        for s in seeds
    ]
    logits = torch.stack(executor.map(run_fixed_seed_job, jobs, progress))
    return logits.view(len(masks), len(seeds), *logits.shape[1:])
