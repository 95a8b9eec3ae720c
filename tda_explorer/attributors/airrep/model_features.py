"""Frozen per-example features taken from the attributed model: AirRep's "pretrained backbone" option.

AirRep fine-tunes a pretrained encoder. For the models this explorer trains, the attributed model itself is
a pretrained representation of the data: with `EncoderConfig(backbone="model_features")` the encoder's
input is, for every example (x, y) and every seed s of the run (final weights),

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


def seed_gradients(models: Sequence[torch.nn.Module], examples: ExampleSet) -> list[torch.Tensor]:
    """`last_layer_gradients` of `examples` under each model, one float32 `[n, C * (d + 1)]` per seed: compute
    them once for the training set and pass them to both `feature_transform` and `feature_set`."""
    if not models:
        raise ConfigError("model features need at least one model.")
    return [last_layer_gradients(m, examples) for m in models]


def feature_transform(
    models: Sequence[torch.nn.Module],
    train: ExampleSet,
    feature_dim: int,
    damping: float = 1e-2,
    seed: int = 0,
    gradients: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The fixed map `T` float32 `[S * C * (d + 1), k]` applied to the raw features: per seed, the inverse
    square root of the damped second moment of the training features,
    `W_s = (Phi_s^T Phi_s / N + damping * mean_eig * I)^(-1/2)` (so the dot product of transformed features
    is the last-layer TRAK / influence kernel of that seed, `mean_eig` = trace / D_s), block-diagonal over
    the seeds, then the Gaussian `feature_projection` `P` to k = `feature_dim` columns (kept whole when 0 or
    >= the width). With a projection, `T = [W_1 @ P_1; ...; W_S @ P_S]` (`P_s` = the rows of seed s), so
    the `[S * D_s, S * D_s]` block-diagonal matrix is never formed. `gradients`: `seed_gradients(models,
    train)` when already computed (else computed here)."""
    if not damping > 0:
        raise ConfigError(f"the feature whitening damping must be > 0, got {damping}.")
    grads = seed_gradients(models, train) if gradients is None else gradients
    if len(grads) != len(models):
        raise ConfigError(f"{len(grads)} gradient blocks given for {len(models)} models.")
    blocks = []
    for g in grads:
        phi = g.double()
        cov = phi.T @ phi / max(len(phi), 1)
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0.0) + damping * float(evals.clamp_min(0.0).mean())
        blocks.append((evecs * evals.rsqrt()) @ evecs.T)
    proj = feature_projection(sum(len(b) for b in blocks), feature_dim, seed)
    if proj is None:
        return torch.block_diag(*blocks).float()
    out, row = [], 0
    for w in blocks:
        out.append((w @ proj[row : row + len(w)].double()).float())
        row += len(w)
    return torch.cat(out)


def model_features(
    models: Sequence[torch.nn.Module],
    examples: ExampleSet,
    projection: torch.Tensor | None = None,
    gradients: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """`[phi_1, ..., phi_S] / sqrt(S)` float32 `[n, S * C * (d + 1)]` over the given models (one per seed),
    times `projection` `[S * C * (d + 1), k]` when given (`[n, k]`, summed seed by seed without forming the
    concatenation). `gradients`: `seed_gradients(models, examples)` when already computed."""
    grads = seed_gradients(models, examples) if gradients is None else gradients
    if not grads or len(grads) != len(models):
        raise ConfigError(
            f"model_features needs one gradient block per model, got {len(grads)} for {len(models)}."
        )
    scale = 1.0 / math.sqrt(len(grads))
    if projection is None:
        return torch.cat([g * scale for g in grads], dim=1)
    width = sum(g.shape[1] for g in grads)
    if projection.shape[0] != width:
        raise ConfigError(f"the feature projection has {projection.shape[0]} rows, the features {width}.")
    out, row = torch.zeros(len(grads[0]), projection.shape[1]), 0
    for g in grads:
        out += (g * scale) @ projection[row : row + g.shape[1]]
        row += g.shape[1]
    return out


def feature_set(
    models: Sequence[torch.nn.Module],
    examples: ExampleSet,
    projection: torch.Tensor | None = None,
    gradients: Sequence[torch.Tensor] | None = None,
) -> ExampleSet:
    """`examples` with `model_features(models, examples, projection, gradients)` as tabular inputs (same
    ids, labels, classes)."""
    return ExampleSet(
        ids=examples.ids,
        inputs=model_features(models, examples, projection, gradients),
        labels=examples.labels,
        class_names=examples.class_names,
        kind="tabular",
        name=f"{examples.name} (model features)",
    )
