"""Seeded, deterministic training of one model on (a subset of) an ExampleSet.

The same (model config, training config, data, seed, mask) gives bit-identical
weights on CPU: init, batch order and dropout draw from RNGs seeded here, and
training runs single-threaded (thread count changes float summation order).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import ModelConfig, build_model, prepare_inputs
from tda_explorer.models.tasks import batch_loss, task_of
from tda_explorer.progress import Progress, check_cancelled
from tda_explorer.training.config import TrainConfig

EVAL_BATCH = 512
PROGRESS_EVERY_S = 2.0  # within an epoch, report progress (and check for a cancel) at most this often


@dataclass
class Checkpoint:
    """Model state after `step` optimizer steps.

    Attributes:
        step: optimizer steps taken (1-based count; the final checkpoint has step == total steps).
        epoch: fractional epoch at the checkpoint.
        lr: learning rate of the last step before the checkpoint.
        segment_mean_lr: mean learning rate over the steps since the previous checkpoint (or start).
        segment_steps: number of steps since the previous checkpoint (or start).
        state: trainable parameters and buffers (CPU tensors), loadable with `strict=False`.
        stage: index of the training stage the checkpoint belongs to (0 unless the run has several
            stages, see `training.stages`; there `step` counts from the start of the first stage and
            `epoch` within the stage).

    The training fields are None for a model imported without them (`import_run`): methods that need the
    schedule (TracIn's learning rates, Source's segments) then refuse with `require_schedule`.
    """

    step: int | None = None
    epoch: float | None = None
    lr: float | None = None
    segment_mean_lr: float | None = None
    segment_steps: int | None = None
    state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    stage: int = 0

    def require_schedule(
        self, method: str, fields: tuple[str, ...] = ("segment_mean_lr", "segment_steps")
    ) -> None:
        """Raise ConfigError unless the checkpoint records `fields` (`method` needs them)."""
        missing = [k for k in fields if getattr(self, k) is None]
        if missing:
            raise ConfigError(
                f"{method} needs each checkpoint's {', '.join(missing)}; this run's checkpoints do not record "
                "them. Import the checkpoints with their metadata, e.g. weights=[[{'state': sd, 'step': 100, "
                "'lr': 0.01}, ...]], or use a method that needs only weights (grad_dot, influence, trak)."
            )

    def info(self) -> dict:
        """JSON-able metadata (everything but the weights)."""
        keys = ("step", "epoch", "lr", "segment_mean_lr", "segment_steps", "stage")
        return {k: getattr(self, k) for k in keys}


@dataclass
class TrainResult:
    """What one training job produces: checkpoints (last = final), timings, optional eval logits."""

    seed: int
    checkpoints: list[Checkpoint]
    seconds: float
    epoch_losses: list[float]
    eval_logits: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def final_state(self) -> dict[str, torch.Tensor]:
        return self.checkpoints[-1].state


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block (restores the previous thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and buffers as detached CPU tensors (frozen pretrained weights are not copied)."""
    state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().cpu().clone() for n, b in model.named_buffers()})
    return state


def checkpoint_steps(total_steps: int, n_checkpoints: int) -> list[int]:
    """Evenly spaced checkpoint steps in (0, total_steps], the last equal to total_steps."""
    n = min(n_checkpoints, total_steps)
    return sorted({max(1, round(total_steps * (k + 1) / n)) for k in range(n)})


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: torch.Tensor, batch: int = EVAL_BATCH) -> torch.Tensor:
    """Logits `[n, C]` (float32, eval mode) for model-ready inputs."""
    was_training = model.training
    model.eval()
    out = [model(inputs[i : i + batch]).float() for i in range(0, len(inputs), batch)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@dataclass(frozen=True)
class StepInfo:
    """After one optimizer step: its 1-based `step`, the `lr` used, the 0-based `epoch`, and `epoch_loss`
    (mean training cross-entropy of the epoch, nats) on the epoch's last step, else None."""

    step: int
    lr: float
    epoch: int
    epoch_loss: float | None


def sgd_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    config: TrainConfig,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    idx: torch.Tensor,
    shuffle: torch.Generator,
    progress: Progress | None = None,
    label: str = "",
) -> Iterator[StepInfo]:
    """Minibatch training over the examples `idx`: `config.epochs` epochs, each in an order drawn from
    `shuffle`, the learning rate of every step from `config`'s schedule; yields after each step (the
    model is in train mode). The one training loop of the package (runs, subset retraining, LoRA members).
    After each epoch, `progress(epoch, epochs, "<label>: epoch e loss l")` when given, and within a long epoch
    at most every `PROGRESS_EVERY_S` a fractional `progress(epoch + steps done / steps, epochs, ...)` (a
    transformer's single epoch would otherwise show nothing for minutes).
    """
    steps_per_epoch = -(-len(idx) // config.batch_size)
    total = steps_per_epoch * config.epochs
    step = 0
    task = task_of(model)
    model.train()
    last_report = time.perf_counter()
    for epoch in range(config.epochs):
        check_cancelled()  # a `progress.cancel_scope` stops training between epochs
        order = idx[torch.randperm(len(idx), generator=shuffle)]
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            batch = order[b * config.batch_size : (b + 1) * config.batch_size]
            lr = config.lr_at(step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = batch_loss(task, model(inputs[batch]), labels[batch]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(batch)
            epoch_loss = loss_sum / len(idx) if b == steps_per_epoch - 1 else None
            if epoch_loss is not None and progress is not None:
                progress(epoch + 1, config.epochs, f"{label}: epoch {epoch + 1} loss {epoch_loss:.4f}")
            elif time.perf_counter() - last_report >= PROGRESS_EVERY_S:
                check_cancelled()
                if progress is not None:
                    progress(epoch + (b + 1) / steps_per_epoch, config.epochs,
                             f"{label}: epoch {epoch + 1}, step {b + 1}/{steps_per_epoch}")  # fmt: skip
                last_report = time.perf_counter()
            yield StepInfo(step, lr, epoch, epoch_loss)


def train_model(
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: ExampleSet,
    seed: int,
    mask: np.ndarray | torch.Tensor | None = None,
    eval_sets: dict[str, ExampleSet] | None = None,
    progress: Progress | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train one model with `seed` on the examples of `data` where `mask` is True (all if None).

    Args:
        init_state: optional starting weights (e.g. a pre-trained stage), loaded with strict=False.
        eval_sets: ExampleSets whose final logits `[n, C]` are returned in `TrainResult.eval_logits`.

    Returns:
        TrainResult with `train_config.checkpoints` checkpoints (the last is the final model).
    """
    start_time = time.perf_counter()
    idx = torch.arange(len(data))
    if mask is not None:
        mask_t = torch.as_tensor(np.asarray(mask), dtype=torch.bool)
        if mask_t.numel() != len(data):
            raise ConfigError(
                f"training mask has length {mask_t.numel()}, the data has {len(data)} examples."
            )
        idx = idx[mask_t]
    if len(idx) == 0:
        raise ConfigError("training mask selects no example; select at least one.")
    with single_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_config, data.input_shape, data.n_classes)
        if init_state is not None:
            model.load_state_dict(init_state, strict=False)
        inputs = prepare_inputs(model, data.inputs)
        labels = data.labels
        shuffle = torch.Generator().manual_seed(seed * 1_000_003 + 17)
        steps_per_epoch = -(-len(idx) // train_config.batch_size)
        total = steps_per_epoch * train_config.epochs
        keep = set(checkpoint_steps(total, train_config.checkpoints))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(train_config, params)
        checkpoints: list[Checkpoint] = []
        epoch_losses: list[float] = []
        seg_lr_sum, seg_steps = 0.0, 0
        steps = sgd_steps(model, opt, train_config, inputs, labels, idx, shuffle, progress, f"seed {seed}")
        for it in steps:
            seg_lr_sum += it.lr
            seg_steps += 1
            if it.step in keep:
                checkpoints.append(
                    Checkpoint(
                        it.step,
                        it.step / steps_per_epoch,
                        it.lr,
                        seg_lr_sum / seg_steps,
                        seg_steps,
                        model_state(model),
                    )
                )
                seg_lr_sum, seg_steps = 0.0, 0
            if it.epoch_loss is not None:
                epoch_losses.append(it.epoch_loss)
        eval_logits = {
            name: predict_logits(model, prepare_inputs(model, es.inputs))
            for name, es in (eval_sets or {}).items()
        }
    return TrainResult(seed, checkpoints, time.perf_counter() - start_time, epoch_losses, eval_logits)


def load_model(
    model_config: ModelConfig, input_shape: tuple[int, ...], n_classes: int, state: dict[str, torch.Tensor]
) -> nn.Module:
    """A model in eval mode with `state` loaded (strict=False so frozen pretrained weights come from the build)."""
    model = build_model(model_config, input_shape, n_classes)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in state]
    if missing:
        raise ConfigError(
            f"checkpoint lacks trainable parameters {missing[:5]}; it was made by another model config."
        )
    model.load_state_dict(state, strict=False)
    return model.eval()
