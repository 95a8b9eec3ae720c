"""Exact forward replay of one seed's training, with checkpoints every k steps (what the reverse pass needs).

`Trajectory.record()` reruns the recipe of a run (`training.weighted`, all data weights 1: bit for bit
`train_model` / `train_staged_model` when the dtype is the run's float32) and keeps, per step, its
stage, learning rate, batch indices and the global torch RNG state before the step (the dropout masks
follow from it; about 5 KB each), and every `k` steps of a stage (and at each stage start) a snapshot:
the flat parameters and the optimizer's state dict. `replay(segment)` restores a snapshot and RNG state
and reruns the segment's `<= k` steps with the real module and `torch.optim` optimizer, returning the
parameters before each step and (Adam) the moments after it.

Flat layout: the trainable parameters (`requires_grad`) in `named_parameters` order, concatenated.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from tda_explorer.attributors.unrolled.chain import chain_train_step, linear_chain, tape_bytes_per_step
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.models import ModelConfig
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.stages import StagedConfig
from tda_explorer.training.trainer import make_optimizer, single_thread
from tda_explorer.training.weighted import StagePlan, init_model, stage_batches, stage_plans, train_step


@dataclass(frozen=True)
class Step:
    """One optimizer step: its `stage`, stage-local index `t` (0-based), `lr`, `batch` indices, and the
    torch RNG state before it (`rng`)."""

    stage: int
    t: int
    lr: float
    batch: torch.Tensor
    rng: torch.Tensor


@dataclass(frozen=True)
class Segment:
    """Global steps `[start, stop)` inside one stage, replayed from the snapshot taken at `start`."""

    stage: int
    start: int
    stop: int


@dataclass
class SegmentReplay:
    """What the reverse pass needs of a segment, per step (lists of length `stop - start`).

    Attributes:
        thetas: flat parameters `[p]` before each step.
        moments: Adam only: `(exp_avg, exp_avg_sq)` flat `[p]` after each step (else empty).
        forwards: Linear/ReLU chains only (`Trajectory.chain`): each step's layer inputs and logits
            (`chain.chain_train_step`), else empty.
    """

    thetas: list[torch.Tensor]
    moments: list[tuple[torch.Tensor, torch.Tensor]]
    forwards: list[tuple[list[torch.Tensor], torch.Tensor]] = field(default_factory=list)


class FlatParams:
    """Views between a module's trainable parameters and one flat vector (see module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = tuple(n for n, _ in named)
        self.shapes = tuple(p.shape for _, p in named)
        self.sizes = tuple(p.numel() for _, p in named)
        self.numel = sum(self.sizes)

    def get(self, model: nn.Module) -> torch.Tensor:
        """Flat copy `[p]` of the model's trainable parameters."""
        params = dict(model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])  # a new tensor

    def set(self, model: nn.Module, flat: torch.Tensor) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, chunk in zip(self.names, flat.split(self.sizes), strict=True):
                params[n].copy_(chunk.view_as(params[n]))

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{name: view}` of a flat vector (differentiable; for `functional_call`)."""
        return {n: c.view(s) for n, c, s in zip(self.names, flat.split(self.sizes), self.shapes, strict=True)}

    def cat_state(self, opt: torch.optim.Optimizer, model: nn.Module, key: str) -> torch.Tensor:
        """One optimizer state entry (e.g. "exp_avg") of every parameter as a flat `[p]` copy."""
        params = dict(model.named_parameters())
        return torch.cat([opt.state[params[n]][key].detach().reshape(-1) for n in self.names])


def default_every(total_steps: int) -> int:
    """k = ceil(sqrt(T)): snapshots and the replayed segment then hold about the same memory."""
    return max(1, math.ceil(math.sqrt(max(1, total_steps))))


class Trajectory:
    """One seed's training, replayable (see module docstring).

    Args:
        model_config, train_config: the run's recipe (a StagedConfig for a multi-stage run).
        data: the run's training set.
        seed: the run seed replayed.
        dtype: floating dtype of the replay (float32 = the trainer's, bit for bit).
        every: k, steps between snapshots (None = `default_every(T)` with T all steps of the run).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig | StagedConfig,
        data: ExampleSet,
        seed: int,
        dtype: torch.dtype,
        every: int | None = None,
        tape_bytes: int = 0,
    ) -> None:
        self.model_config, self.data, self.seed, self.dtype = model_config, data, int(seed), dtype
        self.plans: list[StagePlan] = stage_plans(train_config, len(data))
        self.total_steps = sum(p.total_steps for p in self.plans)
        self.every = int(every) if every else default_every(self.total_steps)
        self.steps: list[Step] = []
        self.snapshots: dict[int, tuple[torch.Tensor, dict]] = {}
        self.segments: list[Segment] = []
        self.models: list[nn.Module] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.inputs: torch.Tensor | None = None
        #: Linear layer names when the model is a Linear/ReLU chain without dropout (`chain`), else None:
        #: `replay` then keeps each step's forward pass for the closed-form reverse step.
        self.chain: list[str] | None = None
        #: Chains trained by SGD (plain or momentum) within `tape_bytes`: per global step, what the
        #: closed-form reverse step needs (`[W_1..W_{L-1}]`, `[a_1..a_{L-1}]`, logits), kept by `record`
        #: so that the reverse pass replays nothing.
        self.tapes: dict[int, tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = {}
        self.tape_bytes = int(tape_bytes)

    def record(self) -> torch.Tensor:
        """Run the recipe once, keeping steps and snapshots; returns the final flat parameters `[p]`."""
        state = None
        with single_thread():
            for k, plan in enumerate(self.plans):
                with torch.random.fork_rng(devices=[]):
                    model, inputs = init_model(self.model_config, self.data, self.seed, state, self.dtype)
                    self.inputs = inputs
                    if not self.models:
                        self.flat = FlatParams(model)
                        self.chain = linear_chain(model, self.flat.names)  # None with dropout p > 0
                    opt = make_optimizer(plan.config, [p for p in model.parameters() if p.requires_grad])
                    model.train()
                    start = len(self.steps)
                    tape = self._tape_stage(k)
                    for t, batch in enumerate(stage_batches(plan, self.seed)):
                        g = len(self.steps)
                        if t % self.every == 0:
                            self.snapshots[g] = (self.flat.get(model), copy.deepcopy(opt.state_dict()))
                        lr = plan.config.lr_at(t, plan.total_steps)
                        self.steps.append(Step(k, t, lr, batch, torch.get_rng_state()))
                        if tape:
                            weights = [model.get_submodule(n).weight.detach().clone() for n in self.chain[1:]]
                            x, y = inputs[batch], self.data.labels[batch]
                            acts, logits = chain_train_step(model, opt, self.chain, x, y, lr)
                            self.tapes[g] = (weights, acts[1:], logits)
                        else:
                            train_step(model, opt, inputs, self.data.labels, batch, lr)
                    stops = [g for g in self.snapshots if g > start] + [len(self.steps)]
                    begins = [start] + [g for g in self.snapshots if g > start]
                    self.segments += [Segment(k, a, b) for a, b in zip(begins, stops, strict=True)]
                self.models.append(model)
                self.optimizers.append(opt)
                state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                state.update({n: b.detach().clone() for n, b in model.named_buffers()})
        return self.flat.get(self.models[-1])

    def _tape_stage(self, stage: int) -> bool:
        """Whether `record` tapes this stage: a chain, not Adam, and every tapeable step within `tape_bytes`."""
        if self.chain is None or self.optimizer_kind(stage) == "adam":
            return False
        item = torch.finfo(self.dtype).bits // 8
        steps = sum(p.total_steps for k, p in enumerate(self.plans) if self.optimizer_kind(k) != "adam")
        batch = max(p.config.batch_size for p in self.plans)
        return steps * tape_bytes_per_step(self.flat.shapes, batch, item) <= self.tape_bytes

    def replay(self, seg: Segment) -> SegmentReplay:
        """Rerun a segment from its snapshot with the real model and optimizer (RNG restored per segment)."""
        model, opt = self.models[seg.stage], self.optimizers[seg.stage]
        theta, opt_state = self.snapshots[seg.start]
        self.flat.set(model, theta)
        opt.load_state_dict(copy.deepcopy(opt_state))
        adam = isinstance(opt, torch.optim.Adam)
        out = SegmentReplay([], [])
        inputs, chain = self.inputs, self.chain
        with single_thread(), torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self.steps[seg.start].rng)
            model.train()
            for g in range(seg.start, seg.stop):
                step = self.steps[g]
                out.thetas.append(self.flat.get(model))
                if chain is not None:
                    x, y = inputs[step.batch], self.data.labels[step.batch]
                    out.forwards.append(chain_train_step(model, opt, chain, x, y, step.lr))
                else:
                    train_step(model, opt, inputs, self.data.labels, step.batch, step.lr)
                if adam:
                    out.moments.append(
                        (
                            self.flat.cat_state(opt, model, "exp_avg"),
                            self.flat.cat_state(opt, model, "exp_avg_sq"),
                        )
                    )
        return out

    def optimizer_kind(self, stage: int) -> str:
        """ "sgd" (plain), "momentum" (heavy ball) or "adam" for a stage."""
        cfg = self.plans[stage].config
        if cfg.optimizer == "adam":
            return "adam"
        return "momentum" if cfg.momentum > 0 else "sgd"

    def _n_state(self, stage: int) -> int:
        return {"sgd": 0, "momentum": 1, "adam": 2}[self.optimizer_kind(stage)]
