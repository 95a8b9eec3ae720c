"""The model zoo: every model is a `TDAModel` = `features` (to the penultimate layer) + `head` (nn.Linear).

`forward(x) -> logits [B, n_classes]`; `features(x) -> [B, feature_dim]` is the
representation used by repsim, UMAP maps and last-layer attribution. The head's
parameters are always named `head.weight` / `head.bias`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tda_explorer.errors import ConfigError
from tda_explorer.models.configs import (
    CNNConfig,
    MLPConfig,
)


def head_prefix(model: nn.Module) -> str:
    """Name prefix of the head's parameters: `"head."` for the zoo, the final Linear's path for imported
    models (`models.imported`); a prefix no parameter has when the model has no head."""
    prefix = getattr(model, "head_prefix", "head.")
    return "\0no-head" if prefix is None else prefix


def model_head(model: nn.Module) -> nn.Linear | None:
    """The model's final `nn.Linear` (whose output is the logits), or None when it has none."""
    if getattr(model, "head_prefix", "head.") is None:
        return None
    head = getattr(model, "head", None)
    return head if isinstance(head, nn.Linear) else None


class TDAModel(nn.Module):
    """`logits = head(features(x))`. Subclasses set `self.body` and `self.head`."""

    body: nn.Module
    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation, `[B, feature_dim]`."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, `[B, n_classes]`."""
        return self.head(self.features(x))


class LogReg(TDAModel):
    def __init__(self, input_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        self.body = nn.Flatten()
        self.head = nn.Linear(math.prod(input_shape), n_classes)


class MLP(TDAModel):
    def __init__(self, cfg: MLPConfig, input_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)


class CNN(TDAModel):
    def __init__(self, cfg: CNNConfig, input_shape: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"cnn needs image inputs [C, H, W], got input shape {input_shape}.")
        c, h, w = input_shape
        factor = 2 ** len(cfg.channels)
        if h % factor or w % factor:
            raise ConfigError(
                f"cnn with {len(cfg.channels)} pooling stages needs H and W divisible by {factor}, got {h}x{w}; "
                "use fewer channels entries or resize the images."
            )
        layers: list[nn.Module] = []
        for out in cfg.channels:
            layers += [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c = out
        layers += [nn.Flatten(), nn.Linear(c * (h // factor) * (w // factor), cfg.dense), nn.ReLU()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cfg.dense, n_classes)
