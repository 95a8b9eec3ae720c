"""LoRA ensemble members (the "lora" kind of `ensemble_members`): settings, adapters, fine-tunes, artifacts.

`add_lora` freezes a run seed's model and injects `peft` LoRA adapters (rank r) on the Linear/Conv2d
layers of its `body` (the text model: the not-yet-adapted Linear layers of its top LoRA layers), leaving
the LoRA matrices and the head trainable; `finetune_lora` fine-tunes one member with a member seed
(adapter init, dropout draws and data order). Fine-tunes are artifacts of kind "lora_members" (one per
member seed), keyed by the run key, the training data fingerprint, the base seed and the LoRA /
fine-tuning settings; `lora_members` loads them or trains the missing ones.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import head_prefix, prepare_inputs
from tda_explorer.store import Workspace, load_tensors, save_tensors
from tda_explorer.store.kinds import ArtifactKind, register_kind
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.runs import TrainedRun
from tda_explorer.training.trainer import Progress, make_optimizer, model_state, sgd_steps, single_thread


@dataclass(frozen=True)
class LoraSettings:
    """How LoRA members are made.

    Args:
        rank: LoRA rank r.
        alpha: LoRA scaling numerator (scale = alpha / r); None = 2 r.
        targets: module names that get adapters; None = every nn.Linear / nn.Conv2d in the model's `body`.
        epochs: fine-tuning epochs per member.
        lr: fine-tuning learning rate; None = the run's `train_config.lr`.
        base_seed: run seed of the shared base model; None = the run's first seed.
        reinit_head: re-initialise the head (from the member seed) before fine-tuning, so that members
            differ more than their adapters alone make them (on mnist5k + MLP it raised the LoRA-ensemble
            TRAK LDS from 80% to about 100% of the naive ensemble's; see benchmarks/ensembles.py).
    """

    rank: int = 4
    alpha: float | None = None
    targets: tuple[str, ...] | None = None
    epochs: int = 2
    lr: float | None = None
    base_seed: int | None = None
    reinit_head: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be an integer >= 1, got {self.rank!r}.")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"LoRA epochs must be an integer >= 1, got {self.epochs!r}.")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"LoRA alpha must be > 0 (or None for 2 x rank), got {self.alpha!r}.")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"LoRA lr must be a positive number (or None for the run's), got {self.lr!r}.")
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))

    def finetune_config(self, run: TrainedRun) -> TrainConfig:
        """The run's training config with this fine-tuning's epochs / lr, one checkpoint, no warm-up."""
        recipe = run.require_recipe("a LoRA ensemble (its members are fine-tuned)")
        if not isinstance(recipe, TrainConfig):
            raise ConfigError(
                "a LoRA ensemble fine-tunes its members with the package's trainer, and this run's recipe is "
                "a user train_fn; import the run with train_config=TrainConfig(...) instead."
            )
        d = recipe.to_dict()
        d.update(epochs=self.epochs, checkpoints=1, warmup_steps=0)
        if self.lr is not None:
            d["lr"] = float(self.lr)
        return TrainConfig.from_dict(d)


def lora_targets(model: nn.Module) -> list[str]:
    """Names of the nn.Linear / nn.Conv2d modules inside `model.body` (the default LoRA targets).

    A model may choose its own default with a `lora_member_targets()` method (the text model: the
    not-yet-adapted Linear layers of its top LoRA layers, so its frozen bottom layers stay cached).
    """
    own = getattr(model, "lora_member_targets", None)
    if own is not None:
        return list(own())
    body = getattr(model, "body", None)
    names = (
        [f"body.{n}" for n, m in body.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if body is not None
        else []
    )
    if not names:
        raise ConfigError(
            "a LoRA ensemble needs Linear or Conv2d layers in the model body (mlp, cnn); "
            f"{type(model).__name__} has none."
        )
    return names


def add_lora(model: nn.Module, rank: int, alpha: float, targets: Sequence[str], init_seed: int) -> nn.Module:
    """Freeze `model`, inject peft LoRA adapters on `targets` (init from `init_seed`), unfreeze the head.

    Adapters the model already has (the text model's own LoRA, an imported peft adapter) are part of the
    shared base: they stay frozen, and a target that already carries one is refused (peft would
    re-initialise it in place).

    Returns the same model; its trainable parameters are the new LoRA A/B matrices and `head.*`.
    """
    from peft import LoraConfig, inject_adapter_in_model

    modules = dict(model.named_modules())
    adapted = [t for t in targets if t in modules and hasattr(modules[t], "lora_A")]
    if adapted:
        raise ConfigError(
            f"LoRA member targets {adapted[:3]} already carry the run's own adapters; choose other layers "
            "(or leave lora_targets unset for the model's default)."
        )
    base_lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = inject_adapter_in_model(config, model)
    for n, p in model.named_parameters():
        p.requires_grad_(("lora_" in n and n not in base_lora) or n.startswith(head_prefix(model)))
    return model


def train_fingerprint(train: ExampleSet) -> str:
    """SHA-256 (16 hex) of the training ids and labels (keys the LoRA fine-tunes)."""
    h = hashlib.sha256("\x1e".join(train.ids).encode())
    h.update(train.labels.numpy().astype("<i8").tobytes())
    return h.hexdigest()[:16]


@dataclass
class LoraMember:
    """A fine-tuned LoRA member: trainable state (LoRA + head) `{name: tensor}` and its training record."""

    seed: int
    state: dict[str, torch.Tensor] = field(repr=False)
    checkpoint: dict
    seconds: float
    epoch_losses: list[float]


def lora_config(
    run: TrainedRun, train: ExampleSet, lora: LoraSettings, targets: list[str], seed: int
) -> dict:
    """The config dict that keys one "lora_members" artifact."""
    base_seed = run.seeds[0] if lora.base_seed is None else lora.base_seed
    return {
        "run": run.key,
        "train": {"fingerprint": train_fingerprint(train), "n": len(train)},
        "base_seed": int(base_seed),
        "rank": lora.rank,
        "alpha": float(lora.alpha if lora.alpha is not None else 2 * lora.rank),
        "targets": list(targets),
        "finetune": lora.finetune_config(run).to_dict(),
        "seed": int(seed),
        "reinit_head": lora.reinit_head,
    }


def finetune_lora(
    run: TrainedRun,
    train: ExampleSet,
    lora: LoraSettings,
    targets: list[str],
    seed: int,
    progress: Progress | None = None,
) -> LoraMember:
    """Fine-tune LoRA adapters + head on the base model with `seed` (as `train_model`, single-threaded)."""
    cfg = lora.finetune_config(run)
    base_seed = run.seeds[0] if lora.base_seed is None else lora.base_seed
    alpha = float(lora.alpha if lora.alpha is not None else 2 * lora.rank)
    import peft  # noqa: F401  (imported before the clock starts: an import is not training time)

    start = time.perf_counter()
    with single_thread(), torch.random.fork_rng(devices=[]):
        model = add_lora(run.model(base_seed), lora.rank, alpha, targets, seed)
        torch.manual_seed(seed)  # head re-initialisation and dropout draws during fine-tuning
        if lora.reinit_head:
            model.head.reset_parameters()
        inputs, labels = prepare_inputs(model, train.inputs), train.labels
        shuffle = torch.Generator().manual_seed(seed * 1_000_003 + 17)
        opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        step, lr, lr_sum, losses = 0, 0.0, 0.0, []
        everyone = torch.arange(len(labels))
        steps = sgd_steps(
            model, opt, cfg, inputs, labels, everyone, shuffle, progress, f"LoRA member seed {seed}"
        )
        for it in steps:
            step, lr, lr_sum = it.step, it.lr, lr_sum + it.lr
            if it.epoch_loss is not None:
                losses.append(it.epoch_loss)
        state = model_state(model)
    ckpt = {
        "step": step,
        "epoch": float(cfg.epochs),
        "lr": lr,
        "segment_mean_lr": lr_sum / step,
        "segment_steps": step,
    }
    return LoraMember(seed, state, ckpt, time.perf_counter() - start, losses)


def _load_member(path: Path, meta: dict) -> LoraMember:
    seed, e = int(meta["config"]["seed"]), meta["extra"]
    state = load_tensors(path / "adapter.pt")
    return LoraMember(seed, state, e["checkpoint"], float(e["seconds"]), e["epoch_losses"])


LORA_KIND = register_kind(
    ArtifactKind(
        "lora_members",
        files=("adapter.pt",),
        save=lambda d, member: save_tensors(d, "adapter", member.state),
        load=_load_member,
        recompute="fit the LoRA ensemble again (finished members are reused)",
    )
).name


def lora_members(
    run: TrainedRun,
    train: ExampleSet,
    lora: LoraSettings,
    seeds: Sequence[int],
    workspace: Workspace,
    progress: Progress | None = None,
) -> list[LoraMember]:
    """The LoRA fine-tunes for `seeds`: loaded from the workspace, or trained (with progress) and stored.

    Each member is its own "lora_members" artifact, so an interrupted fit resumes from finished members.
    """
    targets = list(lora.targets) if lora.targets is not None else lora_targets(run.model(lora.base_seed))
    out = []
    for i, seed in enumerate(seeds):
        cfg = lora_config(run, train, lora, targets, seed)

        def member_progress(done: int, total: int, msg: str, i: int = i) -> None:
            if progress is not None:
                progress(i * total + done, len(seeds) * total, msg)

        member = workspace.cached(
            LORA_KIND,
            cfg,
            lambda seed=int(seed): finetune_lora(run, train, lora, targets, seed, member_progress),
            extra=lambda m: {k: getattr(m, k) for k in ("checkpoint", "seconds", "epoch_losses")},
        )
        out.append(member)
    if progress is not None:
        progress(len(seeds), len(seeds), f"{len(seeds)} LoRA member(s) ready")
    return out
