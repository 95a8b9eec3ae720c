"""Training configuration (a frozen, validated, JSON-able dataclass)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tda_explorer.errors import ConfigError, check_choice

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained.

    Args:
        optimizer: "sgd" (heavy-ball momentum `momentum`) or "adam".
        lr: peak learning rate.
        momentum: SGD momentum beta (ignored by Adam).
        weight_decay: L2 coefficient (coupled, as in torch's SGD/Adam `weight_decay`).
        epochs: passes over the training data.
        batch_size: examples per step (the last batch of an epoch may be smaller).
        schedule: learning-rate schedule over all steps: "constant", "cosine" (to 0) or "linear" (to 0).
        warmup_steps: linear warm-up steps from 0 to `lr`.
        checkpoints: number of checkpoints kept, evenly spaced over training; the last one is the final model.
            Each records its step and the learning rate in effect (TracIn and Source need both).
    """

    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 15
    batch_size: int = 64
    schedule: str = "cosine"
    warmup_steps: int = 0
    checkpoints: int = 5

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}.")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}.")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}.")
        if self.epochs < 1 or self.batch_size < 1 or self.checkpoints < 1 or self.warmup_steps < 0:
            raise ConfigError(
                f"epochs, batch_size and checkpoints must be >= 1 and warmup_steps >= 0; got {self}."
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"bad training config fields: {e}") from e

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate in effect at 0-based `step` of `total_steps`."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        span = max(1, total_steps - self.warmup_steps)
        frac = min(1.0, (step - self.warmup_steps) / span)
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
        return self.lr * (1.0 - frac)


def default_train_config(arch: str) -> TrainConfig:
    """Defaults tuned per architecture for the built-in demos (see README for measured accuracy)."""
    if arch == "logreg":
        return TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, epochs=20, batch_size=64)
    if arch == "cnn":
        return TrainConfig(
            optimizer="adam", lr=2e-3, momentum=0.0, weight_decay=0.0, epochs=12, batch_size=64
        )
    if arch == "text":
        return TrainConfig(optimizer="adam", lr=2e-3, momentum=0.0, weight_decay=0.0, epochs=3, batch_size=32)
    return TrainConfig()
