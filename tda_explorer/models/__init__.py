"""Model zoo: configs (dataclasses) and `build_model`. See `networks.py` for the TDAModel contract."""

from __future__ import annotations

import torch

from tda_explorer.models.build import build_model
from tda_explorer.models.configs import (
    MODEL_CONFIGS,
    CNNConfig,
    HFConfig,
    ImportedConfig,
    LogRegConfig,
    MLPConfig,
    ModelConfig,
    TextConfig,
    default_model_config,
    model_config_from_dict,
)
from tda_explorer.models.networks import TDAModel, head_prefix


def prepare_inputs(model: torch.nn.Module, inputs) -> torch.Tensor:
    """The tensor a model consumes for `inputs` (identity for tensors).

    Texts go through the model's `prepare_texts` (the text model: cached frozen bottom-layer states, or
    tokens), else its `tokenize`.
    """
    if isinstance(inputs, torch.Tensor):
        return inputs
    prepare = getattr(model, "prepare_texts", None) or getattr(model, "tokenize", None)
    return prepare(inputs) if prepare is not None else inputs


__all__ = [
    "MODEL_CONFIGS",
    "CNNConfig",
    "HFConfig",
    "ImportedConfig",
    "LogRegConfig",
    "MLPConfig",
    "ModelConfig",
    "TDAModel",
    "TextConfig",
    "build_model",
    "head_prefix",
    "default_model_config",
    "model_config_from_dict",
    "prepare_inputs",
]
