"""`build_model`: a fresh model for any model config (the zoo's, the text model, a Hugging Face folder, an
imported factory)."""

from __future__ import annotations

from tda_explorer.errors import ConfigError
from tda_explorer.models.configs import (
    CNNConfig,
    HFConfig,
    ImportedConfig,
    LogRegConfig,
    MLPConfig,
    ModelConfig,
    TextConfig,
)
from tda_explorer.models.hf import HFClassifier
from tda_explorer.models.imported import build_imported
from tda_explorer.models.networks import CNN, MLP, LogReg, TDAModel
from tda_explorer.models.text import TextClassifier


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], n_classes: int) -> TDAModel:
    """A fresh model for `cfg` with random init from the global torch RNG (seed it first)."""
    if n_classes < 2 and not isinstance(cfg, ImportedConfig):
        raise ConfigError(f"a classifier needs at least 2 classes, got {n_classes}.")
    if isinstance(cfg, LogRegConfig):
        return LogReg(input_shape, n_classes)
    if isinstance(cfg, MLPConfig):
        return MLP(cfg, input_shape, n_classes)
    if isinstance(cfg, CNNConfig):
        return CNN(cfg, input_shape, n_classes)
    if isinstance(cfg, TextConfig):
        return TextClassifier(cfg, n_classes)
    if isinstance(cfg, HFConfig):
        return HFClassifier(cfg, n_classes)
    if isinstance(cfg, ImportedConfig):
        return build_imported(cfg)
    raise ConfigError(f"no model for config {cfg!r}.")
