"""Model zoo: shapes, the features/head contract, config validation and round trips."""

from __future__ import annotations

import pytest
import torch

from tda_explorer.errors import ConfigError
from tda_explorer.models import (
    CNNConfig,
    LogRegConfig,
    MLPConfig,
    build_model,
    default_model_config,
    model_config_from_dict,
)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
@pytest.mark.parametrize(
    "cfg", [LogRegConfig(), MLPConfig(hidden=(16, 8), dropout=0.2), CNNConfig(channels=(4, 8))]
)
def test_logits_and_features_shapes(cfg, shape):
    torch.manual_seed(0)
    model = build_model(cfg, shape, 10).eval()  # dropout off
    x = torch.rand(5, *shape)
    logits = model(x)
    assert logits.shape == (5, 10)
    feats = model.features(x)
    assert feats.shape == (5, model.head.in_features)
    assert torch.allclose(model.head(feats), logits)
    assert {"head.weight", "head.bias"} <= {n for n, _ in model.named_parameters()}


def test_mlp_dropout_layers_only_when_positive():
    torch.manual_seed(0)
    with_dropout = build_model(MLPConfig(hidden=(8,), dropout=0.5), (4,), 2)
    without = build_model(MLPConfig(hidden=(8,), dropout=0.0), (4,), 2)
    assert any(isinstance(m, torch.nn.Dropout) for m in with_dropout.modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in without.modules())


@pytest.mark.parametrize("arch", ["logreg", "mlp", "cnn", "text"])
def test_config_round_trip(arch):
    cfg = default_model_config(arch)
    assert model_config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "bad",
    [
        {"arch": "transformer"},
        {"arch": "mlp", "hidden": [0]},
        {"arch": "mlp", "dropout": 1.0},
        {"arch": "mlp", "widths": [3]},
        {"arch": "cnn", "channels": []},
    ],
)
def test_bad_configs_are_refused(bad):
    with pytest.raises(ConfigError):
        model_config_from_dict(bad)


def test_cnn_refuses_indivisible_images():
    with pytest.raises(ConfigError, match="divisible"):
        build_model(CNNConfig(channels=(4, 8, 16)), (1, 28, 28), 10)


def test_seeded_init_is_reproducible():
    torch.manual_seed(3)
    a = build_model(MLPConfig(hidden=(8,)), (4,), 3)
    torch.manual_seed(3)
    b = build_model(MLPConfig(hidden=(8,)), (4,), 3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
