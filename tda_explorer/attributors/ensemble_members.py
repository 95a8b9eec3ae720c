"""Ensemble members (Deng et al., "Efficient Ensembles Improve Training Data Attribution").

A member is one model the wrapped attributor sees. Three kinds:

- **independent**: the final (or any) checkpoint of one seed of a multi-seed run.
- **dropout**: a trained seed's model with every `nn.Dropout` replaced by `FixedDropout`, a fixed
  Bernoulli keep-mask scaled by `1/(1 - p)`. The mask has the shape of *one example's* activation and is
  broadcast over the batch, so the member is a deterministic thinned network: per-example gradients
  (`vmap`) and train/query features all see the same mask. Masks are drawn from a CPU generator seeded
  by `member_mask_seed(mask_seed, run_seed, j)` (recorded in `MemberSpec.mask_seed`), layer k of the model
  using `block_seed(member seed, k)`; they do not depend on the checkpoint.
- **lora**: `peft` LoRA adapters (`inject_adapter_in_model`, rank r, on the Linear/Conv2d layers of the
  model's `body`; the text model: the not-yet-adapted Linear layers of its top LoRA layers) on one base
  model (a run seed's final weights, frozen, including any adapters the model already has), plus the
  head, fine-tuned with a member seed (adapter init, dropout draws and data order). Only the member's
  LoRA + head parameters require grad, so gradient attributors with `params="all"` or `"lora"`
  differentiate exactly those. Fine-tunes are artifacts of kind "lora_members" (`ensemble_lora`, which
  makes and stores them).

`MemberRun` is a `TrainedRun` whose "seeds" are member indices `0..n-1`; `model(i, c)` builds member i
at checkpoint c, so the wrapped attributors run unchanged on an ensemble.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tda_explorer.attributors.ensemble_lora import LoraMember, LoraSettings, add_lora, lora_targets
from tda_explorer.errors import ArtifactError, ConfigError
from tda_explorer.training.runs import TrainedRun
from tda_explorer.training.trainer import (
    Checkpoint,
)

MEMBER_KINDS = ("independent", "dropout", "lora")


@dataclass(frozen=True)
class MemberSpec:
    """Identity of one ensemble member (JSON-able via `to_dict`, recorded in metadata).

    Attributes:
        index: position in the ensemble (the member's "seed" in a `MemberRun`).
        kind: "independent" | "dropout" | "lora".
        run_seed: the run seed of the trained model (for LoRA: of the shared base model).
        mask_seed: dropout members: the seed their masks are drawn from.
        lora_seed: LoRA members: the fine-tuning seed (adapter init, dropout draws, data order).
    """

    index: int
    kind: str
    run_seed: int
    mask_seed: int | None = None
    lora_seed: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class MemberRun(TrainedRun):
    """A `TrainedRun` view over ensemble members: `seeds` are member indices, `model(i, c)` builds member i.

    Attributes:
        build: `(member index, checkpoint index) -> nn.Module` (a fresh model each call).
        specs: one MemberSpec per member, in index order.
    """

    build: Callable[[int, int], nn.Module] | None = field(default=None, repr=False)
    specs: tuple[MemberSpec, ...] = ()

    def model(self, seed: int | None = None, checkpoint: int = -1) -> nn.Module:
        """Member `seed` (default: the first of `seeds`) at checkpoint index `checkpoint`, eval mode."""
        seed = self.seeds[0] if seed is None else seed
        if seed not in self.checkpoints or self.build is None:
            raise ArtifactError(
                f"ensemble {self.key} has no member {seed}; its members are {list(self.seeds)}."
            )
        return self.build(seed, checkpoint).eval()

    def view(self, members: Sequence[int]) -> MemberRun:
        """The same ensemble restricted to `members` (e.g. one member for per-member fitting)."""
        return dataclasses.replace(self, seeds=tuple(int(m) for m in members))


# ------------------------------------------------------------------------------------------- dropout
class FixedDropout(nn.Module):
    """Deterministic dropout: `x * mask`, `mask` = Bernoulli(1 - p) keep-mask / (1 - p), fixed.

    `mask` has the shape of one example's activation (`x.shape[1:]`) and is broadcast over the batch;
    it is applied in train and eval mode alike.
    """

    def __init__(self, p: float, mask: torch.Tensor) -> None:
        super().__init__()
        self.p = float(p)
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, shape={tuple(self.mask.shape)}"


def _seed_from(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence; stable across platforms and versions)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def member_mask_seed(mask_seed: int, run_seed: int, j: int) -> int:
    """The seed of the j-th dropout member built on run seed `run_seed` (setting `mask_seed`)."""
    return _seed_from(mask_seed, run_seed, j)


def dropout_layers(model: nn.Module) -> list[str]:
    """Names of the model's `nn.Dropout` modules, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Dropout)]


def _activation_shapes(model: nn.Module, names: list[str], input_shape: tuple[int, ...]) -> dict:
    """Per-example input shape (`x.shape[1:]`) of each named module, from one zero input in eval mode."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())

    def record(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            shapes.setdefault(name, tuple(inputs[0].shape[1:]))

        return hook

    hooks = [modules[n].register_forward_hook(record(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ConfigError(
            f"dropout layers {missing} were not reached by a forward pass; cannot size their masks."
        )
    return shapes


def dropout_masks(
    model: nn.Module, input_shape: tuple[int, ...], seed: int, p: float | None = None
) -> dict[str, torch.Tensor]:
    """Fixed keep-masks `{layer name: float32 [*activation shape]}` (values 0 or `1/(1-p)`) from `seed`.

    Args:
        model: a model with `nn.Dropout` layers (their `p` is used unless `p` is given).
        input_shape: one example's input shape (the run's `input_shape`).
        seed: the member's mask seed; layer k draws from `block_seed`-style `(seed, k)`.
        p: dropout probability overriding the layers' own.
    """
    names = dropout_layers(model)
    if not names:
        raise ConfigError(
            "a dropout ensemble needs a model with dropout layers; train the run with dropout > 0 "
            "(e.g. `--model-option dropout=0.1`)."
        )
    modules = dict(model.named_modules())
    shapes = _activation_shapes(model, names, input_shape)
    masks = {}
    for k, name in enumerate(names):
        rate = float(modules[name].p if p is None else p)
        gen = torch.Generator().manual_seed(_seed_from(seed, k))
        keep = torch.rand(shapes[name], generator=gen) >= rate
        masks[name] = keep.float() / (1.0 - rate)
    return masks


def apply_fixed_dropout(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Replace each named `nn.Dropout` by a `FixedDropout` with its mask (in place); returns the model."""
    for name, mask in masks.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        setattr(parent, child, FixedDropout(getattr(old, "p", 0.0), mask.clone()))
    return model


# ------------------------------------------------------------------------------------------- runs
def state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of a state dict's tensors."""
    return int(sum(t.numel() * t.element_size() for t in state.values()))


def independent_members(run: TrainedRun, seeds: Sequence[int]) -> MemberRun:
    """Members = the run's models of `seeds` (all checkpoints kept)."""
    specs = tuple(MemberSpec(i, "independent", int(s)) for i, s in enumerate(seeds))

    def build(i: int, c: int) -> nn.Module:
        return run.model(specs[i].run_seed, c)

    return _member_run(
        run, "independent", specs, build, {i: run.checkpoints[s.run_seed] for i, s in enumerate(specs)}
    )


def dropout_members(
    run: TrainedRun, seeds: Sequence[int], n_masks: int, mask_seed: int, p: float | None = None
) -> MemberRun:
    """Members = `n_masks` fixed dropout masks on each of the run's models of `seeds` (seed-major order)."""
    specs = tuple(
        MemberSpec(i * n_masks + j, "dropout", int(s), mask_seed=member_mask_seed(mask_seed, s, j))
        for i, s in enumerate(seeds)
        for j in range(n_masks)
    )
    masks = {
        sp.index: dropout_masks(run.model(sp.run_seed), run.input_shape, sp.mask_seed, p) for sp in specs
    }

    def build(i: int, c: int) -> nn.Module:
        return apply_fixed_dropout(run.model(specs[i].run_seed, c), masks[i])

    ckpts = {sp.index: run.checkpoints[sp.run_seed] for sp in specs}
    return _member_run(run, "dropout", specs, build, ckpts)


def lora_member_run(run: TrainedRun, lora: LoraSettings, members: list[LoraMember]) -> MemberRun:
    """Members = LoRA fine-tunes (`lora_members`) on the base seed's final model."""
    base_seed = run.seeds[0] if lora.base_seed is None else lora.base_seed
    alpha = float(lora.alpha if lora.alpha is not None else 2 * lora.rank)
    targets = list(lora.targets) if lora.targets is not None else lora_targets(run.model(base_seed))
    specs = tuple(MemberSpec(i, "lora", int(base_seed), lora_seed=m.seed) for i, m in enumerate(members))

    def build(i: int, c: int) -> nn.Module:
        model = add_lora(run.model(base_seed), lora.rank, alpha, targets, members[i].seed)
        model.load_state_dict(members[i].state, strict=False)
        return model

    ckpts = {i: [Checkpoint(state=m.state, **m.checkpoint)] for i, m in enumerate(members)}
    return _member_run(run, "lora", specs, build, ckpts)


def _member_run(run: TrainedRun, kind: str, specs, build, checkpoints) -> MemberRun:
    metrics = {sp.index: dict(run.metrics.get(sp.run_seed, {})) for sp in specs}
    return MemberRun(
        key=f"{run.key}:{kind}",
        dataset=run.dataset,
        model_config=run.model_config,
        train_config=run.train_config,
        seeds=tuple(sp.index for sp in specs),
        input_shape=run.input_shape,
        n_classes=run.n_classes,
        checkpoints=checkpoints,
        metrics=metrics,
        stages=getattr(run, "stages", None),
        build=build,
        specs=specs,
    )
