"""Train/query feature helpers shared by the gradient attributors (TracIn, influence, TRAK, RepSim).

`gradient_features` streams per-example gradients chunk by chunk through an optional random
projection, so only `[n, k]` (or `[n, p]` without projection) is ever held. `select_models` turns a
`seeds` setting into the run's seeds; `group_matrix` checks a boolean group mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tda_explorer.backend.device import get_device, get_dtype
from tda_explorer.backend.grads import ParamSubset, iter_example_grads
from tda_explorer.backend.projection import RandomProjector
from tda_explorer.errors import ConfigError


def gradient_features(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    params: str | Sequence[str] | ParamSubset = "all",
    objective: str = "loss",
    projector: RandomProjector | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Per-example gradients `[n, p]`, or their projections `[n, k]` when `projector` is given.

    The projection is applied chunk by chunk (its result does not depend on `chunk_size`).
    """
    out = None  # filled chunk by chunk: peak memory is the result plus one chunk, not twice the result
    for start, g in iter_example_grads(
        model, inputs, labels, params, objective, chunk_size=chunk_size, dtype=dtype
    ):
        g = g if projector is None else projector(g)
        if out is None:
            out = torch.empty(len(labels), g.shape[1], dtype=g.dtype, device=g.device)
        out[start : start + len(g)] = g
    if out is None:
        width = projector.k if projector is not None else ParamSubset.resolve(model, params).numel
        return torch.empty(0, width, dtype=dtype or get_dtype(), device=get_device())
    return out


@torch.no_grad()
def true_class_probability(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch: int = 512):
    """`p(y_i | x_i)` `[n]` in the working dtype (eval mode; inputs model-ready)."""
    device, dtype = get_device(), get_dtype()
    model = model.to(device, dtype).eval()
    out = []
    for s in range(0, len(labels), batch):
        x = inputs[s : s + batch].to(device)
        logits = model(x.to(dtype) if x.is_floating_point() else x)
        out.append(torch.softmax(logits, -1).gather(1, labels[s : s + batch].to(device)[:, None]).squeeze(1))
    return torch.cat(out) if out else torch.empty(0, dtype=dtype, device=device)


@torch.no_grad()
def representations(model: nn.Module, inputs: torch.Tensor, batch: int = 512, normalize: bool = True):
    """`model.features(x)` `[n, d]` (unit rows when `normalize`), eval mode, in the working dtype."""
    device, dtype = get_device(), get_dtype()
    model = model.to(device, dtype).eval()
    out = []
    for s in range(0, len(inputs), batch):
        x = inputs[s : s + batch].to(device)
        f = model.features(x.to(dtype) if x.is_floating_point() else x).reshape(len(x), -1)
        out.append(F.normalize(f, dim=1) if normalize else f)
    return torch.cat(out)


def group_matrix(groups: torch.Tensor, n_train: int) -> torch.Tensor:
    """Check a boolean (or 0/1) group mask `[n_groups, n_train]`; return it as float."""
    groups = torch.as_tensor(groups)
    if groups.ndim != 2 or groups.shape[1] != n_train:
        raise ConfigError(f"groups must be a mask [n_groups, {n_train}], got shape {tuple(groups.shape)}.")
    return groups.to(torch.float64)
