"""Frozen per-example features taken from the attributed model: AirRep's "pretrained backbone" option.

AirRep fine-tunes a pretrained encoder. For the models this explorer trains, the attributed model itself is
a pretrained representation of the data: with `EncoderConfig(backbone="model_features")` the encoder's
input is, for every example (x, y) and every selected seed s of the run (final weights),

    phi_s(x, y) = (p_s(x) - onehot(y)) ⊗ [h_s(x), 1]          `[C * (d + 1)]`

the gradient of the cross-entropy loss with respect to the head's weights and bias (the last-layer
gradient, the structure TRAK and influence functions score with), where `h_s` `[d]` is the head's input
(`model.features`) and `p_s = softmax(head(h_s))` `[C]`. The features of the S seeds are concatenated and
scaled by `1/sqrt(S)`:

    phi(x, y) = [phi_1, ..., phi_S] / sqrt(S)                  float32 `[n, S * C * (d + 1)]`

so `<phi(x), phi(z)>` is the seeds' mean last-layer gradient dot product. With `feature_dim` k smaller
than that width D, the features are `phi @ P` `[n, k]` with a fixed Gaussian `P [D, k]`, entries
N(0, 1/k) drawn from `torch.Generator().manual_seed(seed)` (`feature_projection`): dot products are kept
in expectation and a training step's cost no longer grows with S * C * d. Order within a block: the
gradient of `head.weight` (row-major `[C, d]`, class c's row = `r_c * h`), then of `head.bias` (`r`),
i.e. `vec(r ⊗ [h, 1])` with the bias as the last column of each class row (class-major).

The features are computed once per ExampleSet (one forward pass of each seed's model per example, no
gradients) and wrapped as a "tabular" ExampleSet with the same ids and labels (`feature_set`), which the
ordinary tabular encoder (an MLP with a linear skip, `encoder.py`) then embeds: the learned part is small
and a training step costs milliseconds instead of re-embedding raw pixels. Only classification models with
a final `nn.Linear` head (`models.networks.model_head`) have these features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tda_explorer.backend.device import get_device
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import prepare_inputs
from tda_explorer.models.networks import model_head

BATCH = 512


@torch.no_grad()
def last_layer_gradients(model: torch.nn.Module, examples: ExampleSet, batch: int = BATCH) -> torch.Tensor:
    """`vec((p(x) - onehot(y)) ⊗ [h(x), 1])` float32 `[n, C * (d + 1)]` for one model (see module docstring).

    Raises ConfigError for a model without a Linear head or a set without class labels."""
    head = model_head(model)
    if head is None:
        raise ConfigError(
            "backbone='model_features' needs a model whose logits come from a final nn.Linear head; "
            "this model has none (use the default backbone='input')."
        )
    if not examples.class_names:
        raise ConfigError("backbone='model_features' needs classification labels (the set has no classes).")
    device = get_device()
    model = model.to(device, torch.float32).eval()
    inputs = prepare_inputs(model, examples.inputs)
    out = []
    for a in range(0, len(examples), batch):
        x = inputs[a : a + batch].to(device)
        h = model.features(x.float() if x.is_floating_point() else x).reshape(len(x), -1).float()
        r = F.softmax(head(h), dim=1) - F.one_hot(
            examples.labels[a : a + batch].to(device), head.out_features
        )
        h1 = torch.cat([h, torch.ones(len(h), 1, device=device)], dim=1)
        out.append((r[:, :, None] * h1[:, None, :]).flatten(1).cpu())
    width = head.out_features * (head.in_features + 1)
    return torch.cat(out) if out else torch.empty(0, width)


def feature_projection(width: int, feature_dim: int, seed: int = 0) -> torch.Tensor | None:
    """The fixed Gaussian projection `P` float32 `[width, feature_dim]`, N(0, 1/feature_dim) entries; None when
    `feature_dim` is 0 or >= `width` (the features are then kept whole)."""
    if feature_dim <= 0 or feature_dim >= width:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(width, feature_dim, generator=gen) / math.sqrt(feature_dim)


def feature_transform(
    models: Sequence[torch.nn.Module],
    train: ExampleSet,
    feature_dim: int,
    damping: float = 1e-2,
    seed: int = 0,
) -> torch.Tensor:
    """The fixed map `T` float32 `[S * C * (d + 1), k]` applied to the raw features: per seed, the inverse
    square root of the damped second moment of the training features,
    `(Phi_s^T Phi_s / N + damping * mean_eig * I)^(-1/2)` (so the dot product of transformed features is the
    last-layer TRAK / influence kernel of that seed, `mean_eig` = trace / D_s), block-diagonal over the seeds,
    then the Gaussian `feature_projection` to k = `feature_dim` columns (kept whole when 0 or >= the width)."""
    if not damping > 0:
        raise ConfigError(f"the feature whitening damping must be > 0, got {damping}.")
    blocks = []
    for model in models:
        phi = last_layer_gradients(model, train).double()
        cov = phi.T @ phi / max(len(phi), 1)
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0.0) + damping * float(evals.clamp_min(0.0).mean())
        blocks.append((evecs * evals.rsqrt()) @ evecs.T)
    whiten = torch.block_diag(*blocks)
    proj = feature_projection(whiten.shape[0], feature_dim, seed)
    return (whiten if proj is None else whiten @ proj.double()).float()


def model_features(
    models: Sequence[torch.nn.Module], examples: ExampleSet, projection: torch.Tensor | None = None
) -> torch.Tensor:
    """`[phi_1, ..., phi_S] / sqrt(S)` float32 `[n, S * C * (d + 1)]` over the given models (one per seed),
    times `projection` `[S * C * (d + 1), k]` when given (`[n, k]`)."""
    if not models:
        raise ConfigError("model_features needs at least one model.")
    scale = 1.0 / math.sqrt(len(models))
    phi = torch.cat([last_layer_gradients(m, examples) * scale for m in models], dim=1)
    if projection is None:
        return phi
    if projection.shape[0] != phi.shape[1]:
        raise ConfigError(
            f"the feature projection has {projection.shape[0]} rows, the features {phi.shape[1]}."
        )
    return phi @ projection


def feature_set(
    models: Sequence[torch.nn.Module], examples: ExampleSet, projection: torch.Tensor | None = None
) -> ExampleSet:
    """`examples` with `model_features(models, examples, projection)` as tabular inputs (same ids, labels,
    classes)."""
    return ExampleSet(
        ids=examples.ids,
        inputs=model_features(models, examples, projection),
        labels=examples.labels,
        class_names=examples.class_names,
        kind="tabular",
        name=f"{examples.name} (model features)",
    )
