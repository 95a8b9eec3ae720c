"""Seeded random projections, generated block by block, and a Kronecker-factored projection of Linear grads.

`RandomProjector(p, k, seed, kind)` represents `P [p, k] / sqrt(k)` with iid N(0, 1) ("gaussian") or
+-1 ("rademacher") entries, so that `E[<xP, yP>] = <x, y>` (inner products preserved in expectation),
or a sparse Johnson-Lindenstrauss transform ("sjlt", a count sketch: each input coordinate i is added,
with a random sign, to one random output coordinate h(i); `P[i, h(i)] = +-1`, no 1/sqrt(k), the same
expectation). The SJLT costs `O(b p)` per `[b, p]` input instead of the dense kinds' `O(b p k)` GEMM; its
inner-product variance is of the same order as the dense kinds' (Kane & Nelson 2014; GraSS, Hu et al.
2025, use it for gradient compression in TDA).
`P` is never built as one dense matrix: rows `[j*B, (j+1)*B)` (block j, B = `block_rows`) are drawn
from a generator seeded by `(seed, j)`, on the CPU in float32 (so `P` is the same on every device and
for every working dtype), and the product is accumulated block by block. The result depends only on
`(p, k, seed, kind, block_rows)`, never on how the examples are chunked.

`KroneckerProjector` projects a Linear layer's per-example gradient `G = sum_l ds_l a_l^T`
`[d_out, d_in]` with `P_out [d_out, k_out]` and `P_in [d_in, k_in]` separately (LoGra):
`(P_out^T ⊗ P_in^T) vec(G) = vec(P_out^T G P_in) = vec(sum_l (P_out^T ds_l)(P_in^T a_l)^T)` (row-major
vec), without ever forming G.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from tda_explorer.backend.grads import ParamSubset
from tda_explorer.backend.layers import LayerInfo, batch_objective, capture_layers, find_layers
from tda_explorer.errors import ConfigError
from tda_explorer.models.tasks import task_of

PROJECTIONS = ("gaussian", "rademacher", "sjlt")
DEFAULT_BLOCK_ROWS = 1024
DEFAULT_CACHE_BYTES = 512 * 2**20


def block_seed(seed: int, block: int) -> int:
    """A 63-bit generator seed derived from `(seed, block)` (stable across platforms and versions)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(block)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def random_block(rows: int, k: int, seed: int, kind: str) -> torch.Tensor:
    """Unscaled random matrix `[rows, k]` float32 on the CPU, N(0, 1) or +-1 entries, from `seed`.

    For "sjlt" the dense form of `sjlt_block` (one +-1 per row).
    """
    gen = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(rows, k, generator=gen)
    if kind == "sjlt":
        buckets, signs = sjlt_block(rows, k, seed)
        return torch.zeros(rows, k).scatter_(1, buckets[:, None], signs[:, None])
    return torch.randint(0, 2, (rows, k), generator=gen).float().mul_(2).sub_(1)


def sjlt_block(rows: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sparse block of a "sjlt" projection: output coordinate `[rows]` int64 in [0, k) and sign
    `[rows]` float32 (+-1) of each input coordinate, on the CPU, from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    buckets = torch.randint(0, k, (rows,), generator=gen)
    signs = torch.randint(0, 2, (rows,), generator=gen).float().mul_(2).sub_(1)
    return buckets, signs


class RandomProjector:
    """`x [b, p] -> x @ P / sqrt(k)` `[b, k]` (see module docstring).

    Args:
        p: input dimension (number of gradient coordinates).
        k: projection dimension.
        seed: projection seed (record it in artifact metadata).
        kind: "gaussian", "rademacher" or "sjlt".
        block_rows: rows of P generated at once; part of P's identity (keep the default).
        cache_bytes: generated blocks are kept on the device while P fits in `cache_bytes` (Rademacher
            blocks are kept as int8, exactly, so `p * k <= cache_bytes`; Gaussian as float32, `4 p k`;
            SJLT blocks as bucket + sign, `12 p`). Without the cache every `project` call regenerates P.
    """

    def __init__(
        self,
        p: int,
        k: int,
        seed: int = 0,
        kind: str = "rademacher",
        block_rows: int = DEFAULT_BLOCK_ROWS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if kind not in PROJECTIONS:
            raise ConfigError(f"projection kind {kind!r} is not one of {PROJECTIONS}.")
        if p < 1 or k < 1 or block_rows < 1:
            raise ConfigError(
                f"projection needs p, k, block_rows >= 1, got p={p}, k={k}, block_rows={block_rows}."
            )
        self.p, self.k, self.seed, self.kind, self.block_rows = p, k, int(seed), kind, block_rows
        size = {"rademacher": p * k, "gaussian": 4 * p * k, "sjlt": 12 * p}[kind]
        self.cacheable = size <= cache_bytes
        self._cache: dict[tuple[int, str], torch.Tensor] = {}

    def config(self) -> dict:
        """JSON-able identity of the projection."""
        return {"p": self.p, "k": self.k, "seed": self.seed, "kind": self.kind, "block_rows": self.block_rows}

    @property
    def n_blocks(self) -> int:
        return -(-self.p // self.block_rows)

    def block(self, j: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Unscaled rows `[j*B, min(p, (j+1)*B))` of P, float32 on `device`."""
        key = (j, str(device))
        if key in self._cache:
            return self._cache[key].float()
        rows = min(self.p, (j + 1) * self.block_rows) - j * self.block_rows
        out = random_block(rows, self.k, block_seed(self.seed, j), self.kind).to(device)
        if self.cacheable:  # +-1 entries are exact in int8 (4x less memory than float32)
            self._cache[key] = out.to(torch.int8) if self.kind == "rademacher" else out
        return out

    def sparse_block(self, j: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Block j of a "sjlt" projection as (bucket `[rows]` int64, sign `[rows]` float32) on `device`."""
        key = (j, f"sparse:{device}")
        if key in self._cache:
            return self._cache[key]
        rows = min(self.p, (j + 1) * self.block_rows) - j * self.block_rows
        buckets, signs = sjlt_block(rows, self.k, block_seed(self.seed, j))
        out = (buckets.to(device), signs.to(device))
        if self.cacheable:
            self._cache[key] = out
        return out

    def sparse_map(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """A "sjlt" projection whole: output coordinate `[p]` int64 and sign `[p]` of every input coordinate."""
        if self.kind != "sjlt":
            raise ConfigError(f"sparse_map needs a 'sjlt' projection, this one is {self.kind!r}.")
        parts = [self.sparse_block(j, device) for j in range(self.n_blocks)]
        return torch.cat([b for b, _ in parts]), torch.cat([s for _, s in parts])

    def release(self) -> None:
        """Drop the cached blocks of P (they are regenerated, identically, on the next use)."""
        self._cache.clear()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """`x [b, p] @ P / sqrt(k)` -> `[b, k]` in x's dtype and device."""
        if x.ndim != 2 or x.shape[1] != self.p:
            raise ConfigError(f"projector expects inputs [b, {self.p}], got {tuple(x.shape)}.")
        out = x.new_zeros(x.shape[0], self.k)
        for j in range(self.n_blocks):
            s = j * self.block_rows
            if self.kind == "sjlt":  # out[:, h(i)] += sign(i) x[:, i]
                buckets, signs = self.sparse_block(j, x.device)
                out.index_add_(1, buckets, x[:, s : s + len(buckets)] * signs.to(x.dtype))
                continue
            blk = self.block(j, x.device).to(x.dtype)
            out += x[:, s : s + blk.shape[0]] @ blk
        return out if self.kind == "sjlt" else out / math.sqrt(self.k)

    __call__ = project

    def matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense scaled `P / sqrt(k)` (SJLT: `P`) `[p, k]` on the CPU (for tests and small p only)."""
        dense = torch.cat([self.block(j).to(dtype) for j in range(self.n_blocks)])
        return dense if self.kind == "sjlt" else dense / math.sqrt(self.k)


class KroneckerProjector:
    """Projection of one Linear layer's gradient with `P_out ⊗ P_in` (see module docstring).

    Args:
        d_in: layer input width incl. the bias column (`LayerInfo.d_in`).
        d_out: layer output width.
        k_in / k_out: projected widths; the feature has `k_out * k_in` entries.
        seed: seed; `P_in` uses `block_seed(seed, 0)`, `P_out` uses `block_seed(seed, 1)`.
        kind: "gaussian", "rademacher" or "sjlt". Dense factors are scaled by `1/sqrt(k)`.
    """

    def __init__(self, d_in: int, d_out: int, k_in: int, k_out: int, seed: int = 0, kind: str = "rademacher"):
        self.proj_in = RandomProjector(d_in, k_in, block_seed(seed, 0), kind, block_rows=d_in)
        self.proj_out = RandomProjector(d_out, k_out, block_seed(seed, 1), kind, block_rows=d_out)
        self.k_in, self.k_out = k_in, k_out

    def project(self, a: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
        """Projected per-example gradients `[B, k_out * k_in]` from `a [B, L, d_in]` and `ds [B, L, d_out]`.

        Equals `vec(P_out^T G_i P_in)` with `G_i = sum_l ds_{i,l} a_{i,l}^T` (row-major vec).
        """
        pa = self.proj_in(a.reshape(-1, a.shape[-1])).view(*a.shape[:-1], self.k_in)
        pd = self.proj_out(ds.reshape(-1, ds.shape[-1])).view(*ds.shape[:-1], self.k_out)
        return torch.einsum("blo,bli->boi", pd, pa).reshape(len(a), -1)

    def matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense `kron(P_out^T, P_in^T)` `[k_out*k_in, d_out*d_in]` (tests only)."""
        return torch.kron(self.proj_out.matrix(dtype).T, self.proj_in.matrix(dtype).T)


def kronecker_sizes(layers: list[LayerInfo], proj_dim: int) -> list[tuple[int, int]]:
    """Per-layer `(k_in, k_out)` sharing a total budget of about `proj_dim` feature columns.

    Each of the L layers gets `b = proj_dim // L` columns split as evenly as its shape allows:
    `k_out = min(d_out, round(sqrt(b)))`, `k_in = min(d_in, b // k_out)` (a side is never projected to
    more dimensions than it has, so a 10-class head keeps all 10 outputs and takes a wider input side).

    Raises:
        ConfigError: when `proj_dim` is smaller than the number of layers.
    """
    if proj_dim < len(layers):
        raise ConfigError(
            f"a Kronecker projection needs proj_dim >= the number of layers ({len(layers)}), got {proj_dim}."
        )
    budget = proj_dim // max(len(layers), 1)
    sizes = []
    for info in layers:
        k_out = max(1, min(info.d_out, round(math.sqrt(budget))))
        sizes.append((max(1, min(info.d_in, budget // k_out)), k_out))
    return sizes


def kronecker_features(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    params: str | list[str] = "all",
    k_in: int = 16,
    k_out: int = 16,
    seed: int = 0,
    kind: str = "rademacher",
    objective: str = "loss",
    batch_size: int = 256,
    sizes: list[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """LoGra features: per-example gradients of every supported layer projected with `P_out ⊗ P_in`.

    Args:
        model: model already on the working device/dtype (eval mode: no cross-example coupling).
        inputs / labels: model-ready inputs `[n, ...]`, labels `int64 [n]`.
        params: parameter subset; every parameter must sit in an nn.Linear / nn.Conv2d layer.
        k_in / k_out: per-layer projection sizes (feature width `k_out * k_in` per layer).
        seed: projection seed; layer i uses `block_seed(seed, i)`.
        objective: "loss" (cross-entropy) or "margin" (TRAK's).
        sizes: per-layer `(k_in, k_out)` overriding `k_in` / `k_out` (e.g. from `kronecker_sizes`).

    Returns:
        `[n, sum_layers k_out * k_in]`, layers in flat-gradient order; inner products of two rows
        approximate (in expectation equal) the inner product of the full per-example gradients.
    """
    subset = ParamSubset.resolve(model, params)
    layers = find_layers(model, subset)
    sizes = [(k_in, k_out)] * len(layers) if sizes is None else list(sizes)
    if len(sizes) != len(layers):
        raise ConfigError(f"sizes has {len(sizes)} entries for {len(layers)} layers.")
    projectors = [
        KroneckerProjector(i.d_in, i.d_out, ki, ko, block_seed(seed, j), kind)
        for j, (i, (ki, ko)) in enumerate(zip(layers, sizes, strict=True))
    ]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    width = sum(ki * ko for ki, ko in sizes)
    out = torch.empty(len(labels), width, dtype=dtype, device=device)  # filled in place: no concat copy
    for s in range(0, len(labels), batch_size):
        x = inputs[s : s + batch_size].to(device)
        x = x.to(dtype) if x.is_floating_point() else x
        with capture_layers(model, layers) as store:
            model.zero_grad(set_to_none=True)
            batch_objective(
                model(x), labels[s : s + batch_size].to(device), objective, task_of(model)
            ).backward()
        col = 0
        for pr, info in zip(projectors, layers, strict=True):
            block = pr.project(*store[info.name])
            out[s : s + len(x), col : col + block.shape[1]] = block
            col += block.shape[1]
    model.zero_grad(set_to_none=True)
    return out
