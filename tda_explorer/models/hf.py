"""Any local Hugging Face sequence classifier as a `TDAModel` (BERT-like, DistilBERT, RoBERTa, ...).

`HFClassifier` loads `AutoModelForSequenceClassification` + `AutoTokenizer` from a folder written by
`save_pretrained` (offline: `local_files_only=True`, float32, eager attention), optionally with a `peft`
adapter folder on top (`PeftModel.from_pretrained(..., is_trainable=True)`: base weights frozen, LoRA
and the adapter's `modules_to_save` trainable).

The final classification `nn.Linear` (the one whose output is the logits) is taken out of the Hugging
Face model and becomes `self.head`, an `nn.Identity` taking its place, so:

- `features(x) -> [B, d]` is the Hugging Face model's output without its last Linear (BERT: the
  pooled [CLS] state; DistilBERT: after `pre_classifier` + ReLU; RoBERTa: after `classifier.dense` +
  tanh) and `forward(x) = head(features(x)) -> logits [B, C]` equals the original model's logits;
- the head's parameters are named `head.weight` / `head.bias`, the rest `body.<Hugging Face name>`,
  so the parameter subsets "head", "lora" (LoRA matrices + head, adapter present) and "all" resolve as
  for the built-in text model (`backend.grads.ParamSubset`).

Input contract (as `models.text`): tokens `int64 [B, 2, L]`, input ids and attention mask stacked
(`tokenize(texts)`), one tensor per example so per-example gradient code vmaps over dim 0. The mask
is handed to the model as a 4D additive mask `[B, 1, 1, L]`, which transformers passes through
unchanged: its own mask helper branches on tensor values (`padding_mask.all()`) and so cannot run
under `torch.func.vmap`. Outside transforms, padding columns past the longest text of the batch are
dropped first (padding never changes a real position's output, only the cost).

What is stored per seed of a run is every trainable parameter (`training.trainer.model_state`); the
frozen base weights always come from the folder, whose content hash (`HFConfig.fingerprint`) is checked
when a model is built so a changed folder is refused instead of silently mixed with stored weights.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from tda_explorer.errors import ConfigError
from tda_explorer.models.configs import HFConfig
from tda_explorer.models.encoder import _under_transform, used_length
from tda_explorer.models.networks import TDAModel

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
CONFIG_FILES = ("config.json", "adapter_config.json")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file's bytes (memoised by path, size and modification time)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def folder_fingerprint(*folders: str | None) -> str:
    """SHA-256 (16 hex) over the config and weight files of the given folders (None entries skipped)."""
    h = hashlib.sha256()
    for folder in folders:
        if folder is None:
            continue
        files = sorted(
            p
            for p in Path(folder).iterdir()
            if p.is_file() and (p.name in CONFIG_FILES or p.suffix in WEIGHT_SUFFIXES)
        )
        for p in files:
            st = p.stat()
            h.update(p.name.encode() + b"\0" + _file_digest(str(p), st.st_size, st.st_mtime_ns).encode())
    return h.hexdigest()[:16]


def check_folder(folder: str, what: str = "model folder") -> Path:
    """The folder as an absolute Path; ConfigError if it is not a folder with a config file."""
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise ConfigError(f"Hugging Face {what} {str(p)!r} is not a folder.")
    if not any((p / name).is_file() for name in CONFIG_FILES):
        raise ConfigError(
            f"Hugging Face {what} {str(p)!r} has no config.json / adapter_config.json; "
            "pass the folder written by save_pretrained."
        )
    return p.resolve()


@lru_cache(maxsize=8)
def load_tokenizer(folder: str):
    """The tokenizer saved in `folder` (offline); ConfigError when there is none or it cannot pad."""
    _offline()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"no tokenizer could be loaded from {folder!r} ({e}); save it there with "
            "tokenizer.save_pretrained(folder)."
        ) from e
    if tok.pad_token is None:
        raise ConfigError(
            f"the tokenizer in {folder!r} has no padding token; set one (e.g. tokenizer.pad_token = "
            "tokenizer.eos_token) and save it again."
        )
    return tok


def load_hf_model(cfg: HFConfig) -> nn.Module:
    """The Hugging Face classifier of `cfg` (float32, eager attention, eval mode), adapter applied."""
    _offline()
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            cfg.folder, local_files_only=True, dtype=torch.float32, attn_implementation="eager"
        )
        if cfg.adapter is not None:
            from peft import PeftModel

            with warnings.catch_warnings():  # peft calls transformers APIs deprecated in v5
                warnings.filterwarnings("ignore", category=FutureWarning)
                model = PeftModel.from_pretrained(model, cfg.adapter, is_trainable=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load the Hugging Face model of {cfg}: {e}") from e
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.eval()


def final_linear(model: nn.Module, n_labels: int) -> str:
    """Name of the module that produces the logits: the last `nn.Linear` with `n_labels` outputs.

    peft's copies are resolved (`modules_to_save.<adapter>`, never `original_module`); LoRA on that
    layer is refused (its output would no longer be one Linear of the features).
    """
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and m.out_features == n_labels
        and "original_module" not in n.split(".")
        and "lora_" not in n
    ]
    if not names:
        raise ConfigError(
            f"no nn.Linear with {n_labels} outputs found in {type(model).__name__}: "
            "cannot identify the classification layer."
        )
    name = names[-1]
    if name.endswith(".base_layer"):
        raise ConfigError(
            f"the adapter puts LoRA on the classification layer {name[: -len('.base_layer')]!r}; "
            "train it as a full layer (peft modules_to_save) instead."
        )
    return name


class HFClassifier(TDAModel):
    """A local Hugging Face sequence classifier: `features` (model without its last Linear) + `head`.

    Args:
        cfg: the folder(s) and token limit (`HFConfig`).
        n_classes: the dataset's number of classes; must equal the model's `num_labels`.

    Raises:
        ConfigError: a missing / changed folder, or `num_labels != n_classes`.
    """

    def __init__(self, cfg: HFConfig, n_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        check_folder(cfg.folder)
        if cfg.adapter is not None:
            check_folder(cfg.adapter, "adapter folder")
        if cfg.fingerprint and folder_fingerprint(cfg.folder, cfg.adapter) != cfg.fingerprint:
            raise ConfigError(
                f"the files in {cfg.folder!r}"
                + (f" / {cfg.adapter!r}" if cfg.adapter else "")
                + " changed since the run was imported; import the folder again."
            )
        model = load_hf_model(cfg)
        n_labels = int(model.config.num_labels)
        if n_labels != n_classes:
            raise ConfigError(
                f"the Hugging Face model in {cfg.folder!r} has num_labels={n_labels} but the dataset has "
                f"{n_classes} classes; attribute it on a dataset with its {n_labels} classes."
            )
        name = final_linear(model, n_labels)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        self.head = getattr(parent, child)  # registered before the body: its params are `head.*`
        setattr(parent, child, nn.Identity())
        self.body = model
        self.head_name = name

    @property
    def hf_config(self):
        """The Hugging Face `PretrainedConfig` of the wrapped model."""
        return self.body.config

    def lora_member_targets(self) -> list[str]:
        """Default targets of LoRA-ensemble members (`attributors.ensemble_members`): every `nn.Linear` of
        the model that the forward pass uses and that has no adapter yet (never peft's own matrices)."""
        names = []
        for name, module in self.body.named_modules():
            parts = name.split(".")
            if not isinstance(module, nn.Linear) or "original_module" in parts:
                continue
            if "lora_" in name or parts[-1] == "base_layer" or hasattr(module, "lora_A"):
                continue
            names.append(f"body.{name}")
        return names

    def tokenize(self, texts: tuple[str, ...] | list[str]) -> torch.Tensor:
        """Token tensor `int64 [B, 2, max_length]`: ids and attention mask, padded / truncated."""
        enc = load_tokenizer(self.cfg.tokenizer_folder)(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.cfg.max_length,
            return_tensors="pt",
        )
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1).long()

    def trim_padding(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens `[B, 2, L]` without the padding columns none of the batch uses (`backend.grads` trims each
        chunk with it before `vmap`; the outputs are the same)."""
        return x[..., : used_length(x[:, 1])]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Input of the classification Linear, `[B, d]`, from tokens `int64 [B, 2, L]`."""
        if x.dtype not in (torch.int32, torch.int64) or x.dim() != 3 or x.shape[1] != 2:
            raise ConfigError(
                f"Hugging Face model input of shape {tuple(x.shape)} ({x.dtype}): expected tokens "
                "int64 [B, 2, L] (`tokenize(texts)`)."
            )
        ids, mask = x[:, 0], x[:, 1]
        if not _under_transform(mask):
            n = used_length(mask)
            ids, mask = ids[:, :n], mask[:, :n]
        dtype = self.body.get_input_embeddings().weight.dtype
        additive = (1.0 - mask.to(dtype))[:, None, None, :] * torch.finfo(dtype).min
        out = self.body(input_ids=ids, attention_mask=additive)
        return out.logits if hasattr(out, "logits") else out[0]
