"""Gradient inner products without per-example gradients ("ghost" dot products) for Linear-only models.

For an `nn.Linear` layer fed one vector per example, example i's weight gradient is the outer product
`ds_i a_i^T` (`a_i` = the layer input with a 1 appended for the bias, `ds_i` = the gradient of i's
objective w.r.t. the layer output). Hence, summed over layers,

    <g_q, g_t> = sum_l (a_q . a_t) (ds_q . ds_t),        ||g_t||^2 = sum_l ||a_t||^2 ||ds_t||^2,

which costs `O(n_q n_t sum_l (d_in + d_out))` instead of materialising `[n, p]` gradients
(`p = sum_l d_in d_out`): for the MNIST MLP (784-256-128-10, p = 235k) the factors of 4,000 examples
take 25 MB instead of 3.8 GB. Valid when every parameter of the subset belongs to such a layer (the MLP
and logistic-regression models; not convolutions or sequence inputs, whose gradients are sums of
outer products) and examples do not interact in the forward pass (no batch norm in train mode).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tda_explorer.backend.device import get_device, get_dtype
from tda_explorer.backend.grads import ParamSubset
from tda_explorer.backend.layers import (
    LayerInfo,
    batch_objective,
    capture_layers,
    find_layers,
    flat_to_layer,
    layer_to_flat,
)
from tda_explorer.backend.projection import RandomProjector
from tda_explorer.errors import ConfigError
from tda_explorer.models.tasks import task_of

GHOST_BATCH = 512


#: Bytes of dense gradients materialised at once from the factors. MNIST logistic regression, EK-FAC
#: fit + score peak: 224 MB at 32 MiB, 141 MB at 8 MiB (496 MB at 256 MiB together with 256 MiB query
#: chunks); MNIST-MLP EK-FAC scoring (1 thread) 32.9 s / 1,127 MB at 32 MiB vs 31.6 s / 1,230 MB at 256.
DENSE_CHUNK_BYTES = 8 * 2**20
#: ... but at least this many rows, so that a chunk's GEMM stays efficient for wide models (the MNIST
#: MLP's 235k-wide rows then come 32 at a time, about 30 MB, as they did at 32 MiB).
MIN_CHUNK_ROWS = 32


def rows_per_chunk(row_bytes: int) -> int:
    """Rows of `row_bytes` each per dense chunk: about `DENSE_CHUNK_BYTES`, at least `MIN_CHUNK_ROWS`."""
    return max(MIN_CHUNK_ROWS, DENSE_CHUNK_BYTES // max(1, row_bytes))


@dataclass
class GhostFactors:
    """Per layer `(a [n, d_in_aug], ds [n, d_out])`, optionally with per-example scales `[n]`.

    Example i's gradient over the subset is `concat_l (ds_l[i] a_l[i]^T) * scale[i]` (scale 1 when None);
    `layers` (from `find_layers`, same order) place each block in the flat `[n, p]` gradient.
    """

    factors: list[tuple[torch.Tensor, torch.Tensor]]
    scale: torch.Tensor | None = None
    layers: list[LayerInfo] | None = None
    numel: int = 0

    def __len__(self) -> int:
        return len(self.factors[0][0])

    def dot(self, other: GhostFactors) -> torch.Tensor:
        """`<g_i, g_j>` for i in self, j in other: float32 `[len(self), len(other)]` on the CPU."""
        out = None
        for (a, d), (b, e) in zip(self.factors, other.factors, strict=True):
            block = (a @ b.to(a).T) * (d @ e.to(d).T)
            out = block if out is None else out + block
        if self.scale is not None:
            out = out * self.scale[:, None].to(out)
        if other.scale is not None:
            out = out * other.scale[None, :].to(out)
        return out.float().cpu()

    def sqnorm(self) -> torch.Tensor:
        """`||g_i||^2` `[n]` in the factors' dtype."""
        out = sum(a.square().sum(1) * d.square().sum(1) for a, d in self.factors)
        return out if self.scale is None else out * self.scale.square()

    def normalized(self) -> GhostFactors:
        """The same gradients scaled to unit norm (zero gradients stay zero)."""
        norm = self.sqnorm().sqrt()
        scale = torch.where(norm > 0, 1 / norm, torch.zeros_like(norm))
        return GhostFactors(self.factors, scale, self.layers, self.numel)

    def _scaled(self, a: int, b: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.scale is None:
            return [(x[a:b], d[a:b]) for x, d in self.factors]
        return [(x[a:b], d[a:b] * self.scale[a:b, None].to(d)) for x, d in self.factors]

    def dense(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """The flat gradients `[stop - start, p]` of examples `start:stop` (materialise a chunk at a time)."""
        stop = len(self) if stop is None else stop
        first = self.factors[0][0]
        out = torch.zeros(stop - start, self.numel, dtype=first.dtype, device=first.device)
        for info, (a, d) in zip(self._layers(), self._scaled(start, stop), strict=True):
            layer_to_flat(d[:, :, None] * a[:, None, :], info, out)
        return out

    def dot_dense(self, v: torch.Tensor) -> torch.Tensor:
        """`v [m, p] @ g.T`: float32 `[m, n]` on the CPU, materialising the gradients one chunk at a time.

        (A rank-1 contraction per layer would avoid the chunks but builds an `[m, d_out, chunk]` block
        and is memory-bound; the chunked GEMM is faster.)
        """
        n = len(self)
        out = torch.empty(len(v), n, dtype=torch.float32)
        for s in range(0, n, self.chunk_rows()):
            block = self.dense(s, min(n, s + self.chunk_rows()))
            out[:, s : s + len(block)] = (v.to(block) @ block.T).float().cpu()
        return out

    def chunk_rows(self) -> int:
        """Rows of flat dense gradients per chunk (`rows_per_chunk`)."""
        return rows_per_chunk(self.numel * self.factors[0][0].element_size())

    def group_sum(self, mask: torch.Tensor) -> torch.Tensor:
        """`mask [g, n] @ gradients`: the summed gradient of each group, `[g, p]`."""
        first = self.factors[0][0]
        out = torch.zeros(len(mask), self.numel, dtype=first.dtype, device=first.device)
        w = mask.to(first)
        for info, (a, d) in zip(self._layers(), self._scaled(0, len(self)), strict=True):
            mats = torch.stack([(d * w[g][:, None]).T @ a for g in range(len(w))])  # [g, o, i]
            layer_to_flat(mats, info, out)
        return out

    def sketch(self, projector: RandomProjector) -> torch.Tensor:
        """The gradients projected by a "sjlt" projector, `projector(dense gradients)` `[n, k]`, a layer at a
        time without the flat `[n, p]` gradients: block `ds a^T` (times its signs) is added to its buckets.

        Cost `O(n p)` memory traffic in chunks of `rows_per_chunk`; no per-example backward passes. Profiled
        on the MNIST MLP (TRAK, 2 models: train features at fit and at scoring, plus 500 queries): 7.0 s
        here against 15.2 s through `torch.func` gradients + concatenation + sketch (1.5 s of which a
        one-off import).
        """
        first = self.factors[0][0]
        buckets, signs = projector.sparse_map(first.device)
        positions = torch.arange(self.numel, device=first.device)[None]
        out = torch.zeros(len(self), projector.k, dtype=first.dtype, device=first.device)
        for info, (a, d) in zip(self._layers(), self.factors, strict=True):
            pos = flat_to_layer(positions, info)[0]  # [d_out, d_in] flat coordinate of each entry
            bucket, sign = buckets[pos].flatten(), signs[pos].to(first.dtype)
            rows = rows_per_chunk(pos.numel() * first.element_size())
            for s in range(0, len(self), rows):
                block = torch.bmm(d[s : s + rows, :, None], a[s : s + rows, None, :]).mul_(sign)
                out[s : s + rows].index_add_(1, bucket, block.reshape(len(block), -1))
        return out if self.scale is None else out * self.scale[:, None].to(out)

    def _layers(self) -> list[LayerInfo]:
        if self.layers is None:
            raise ConfigError("these ghost factors carry no layer layout (build them with ghost_factors).")
        return self.layers


def ghost_supported(model: nn.Module, params: str | Sequence[str] | ParamSubset) -> bool:
    """Whether every parameter of the subset sits in an `nn.Linear` fed flat `[B, d]` inputs.

    Checked structurally (layer types, and the model kind: its layers must see one vector per example,
    which holds for the flat-input models with Linear layers only, i.e. no convolution, embedding or
    attention in the subset's path).
    """
    subset = params if isinstance(params, ParamSubset) else ParamSubset.resolve(model, params)
    try:
        layers = find_layers(model, subset)
    except ConfigError:
        return False
    modules = dict(model.named_modules())
    if any(not isinstance(modules[info.name], nn.Linear) for info in layers):
        return False
    # any module that mixes positions (conv, attention, embeddings) means Linear inputs may be sequences
    return not any(
        isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.MultiheadAttention))
        or "Attention" in type(m).__name__
        for m in model.modules()
    )


def ghost_factors(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    params: str | Sequence[str] | ParamSubset = "all",
    objective: str = "loss",
    batch_size: int = GHOST_BATCH,
    dtype: torch.dtype | None = None,
) -> GhostFactors:
    """The layer factors of the per-example gradients of `objective` (see module docstring).

    Raises:
        ConfigError: if the subset is not ghost-compatible (see `ghost_supported`), or a layer sees more
            than one position per example.
    """
    if not ghost_supported(model, params):
        raise ConfigError("ghost dot products need a subset of nn.Linear layers with flat inputs.")
    device, dtype = get_device(), dtype or get_dtype()
    subset = params if isinstance(params, ParamSubset) else ParamSubset.resolve(model, params)
    layers = find_layers(model, subset)
    model = copy.deepcopy(model).to(device, dtype)  # a copy: .to() and .backward() would touch the caller's
    for param in model.parameters():
        param.requires_grad_(True)
    parts: dict[str, tuple[list, list]] = {info.name: ([], []) for info in layers}
    for s in range(0, len(labels), batch_size):
        x = inputs[s : s + batch_size].to(device)
        x = x.to(dtype) if x.is_floating_point() else x
        y = labels[s : s + batch_size].to(device)
        with capture_layers(model, layers) as store, torch.enable_grad():
            batch_objective(
                model(x), y, objective, task_of(model)
            ).backward()  # fires the output-gradient hooks
        model.zero_grad(set_to_none=True)
        for info in layers:
            a, ds = store[info.name]
            if a.shape[1] != 1:
                raise ConfigError(
                    f"layer {info.name!r} sees {a.shape[1]} positions per example; no ghost path."
                )
            parts[info.name][0].append(a[:, 0])
            parts[info.name][1].append(ds[:, 0])
    factors = [(torch.cat(parts[i.name][0]), torch.cat(parts[i.name][1])) for i in layers]
    return GhostFactors(factors, layers=layers, numel=subset.numel)
