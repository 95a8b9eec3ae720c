"""The Hessian of the mean training loss over a parameter subset: exact matrix, HVPs, CG and LiSSA solvers.

`H = (1/n) sum_i d^2 loss_i / d theta^2` (cross-entropy, no regulariser) over the flattened parameters of a
`ParamSubset` (order of `ParamSubset.names`), evaluated at the model's current weights. Solvers return
`x = (H + damping I)^{-1} b`; callers fold weight decay into `damping` (the L2 term `wd/2 ||theta||^2`
adds `wd I` to H). The exact path materialises `[p, p]` and is meant for small models (reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, hessian

from tda_explorer.backend.device import get_device
from tda_explorer.backend.grads import ParamSubset
from tda_explorer.backend.layers import batch_objective
from tda_explorer.errors import ConfigError

HVP = Callable[[torch.Tensor], torch.Tensor]


class LossHessian:
    """Hessian of the mean cross-entropy of `(inputs, labels)` w.r.t. a parameter subset.

    Args:
        model: the model (moved to `device`; its weights are read, never changed).
        inputs / labels: model-ready inputs `[n, ...]` and `int64 [n]`.
        params: ParamSubset spec ("all", "head", name prefixes).
        batch_size: examples per chunk of the Hessian / HVP computation.
        device / dtype: default `get_device()` and float64 (reference precision).
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        params: str | Sequence[str] | ParamSubset = "all",
        batch_size: int = 256,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.device = device or get_device()
        self.dtype = dtype
        self.subset = params if isinstance(params, ParamSubset) else ParamSubset.resolve(model, params)
        self.model = model.to(self.device)
        named = {n: p.detach().to(self.device, dtype) for n, p in model.named_parameters()}
        self.frozen = {n: p for n, p in named.items() if n not in self.subset.names}
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self.theta = torch.cat([named[n].reshape(-1) for n in self.subset.names])
        self.inputs, self.labels, self.batch_size = inputs, labels, batch_size
        self.n = len(labels)

    @property
    def p(self) -> int:
        return self.theta.numel()

    def _unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, pos = {}, 0
        for name, shape in zip(self.subset.names, self.subset.shapes, strict=True):
            size = math.prod(shape)
            out[name] = theta[pos : pos + size].view(shape)
            pos += size
        return out

    def loss_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Sum of per-example cross-entropies of the batch `(x, y)` at flat parameters `theta [p]`."""
        logits = functional_call(self.model, ({**self.frozen, **self._unflatten(theta)}, self.buffers), (x,))
        return batch_objective(logits, y, "loss")

    def _batches(self, index: torch.Tensor | None = None):
        idx = torch.arange(self.n) if index is None else index
        for s in range(0, len(idx), self.batch_size):
            b = idx[s : s + self.batch_size]
            x = self.inputs[b].to(self.device)
            yield (x.to(self.dtype) if x.is_floating_point() else x), self.labels[b].to(self.device)

    def matrix(self) -> torch.Tensor:
        """The exact Hessian `[p, p]` (dtype of the object), symmetrised."""
        h = torch.zeros(self.p, self.p, dtype=self.dtype, device=self.device)
        for x, y in self._batches():
            h += hessian(self.loss_sum)(self.theta, x, y)
        h /= self.n
        return (h + h.T) / 2

    def hvp(self, v: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """`H v` for `v [p]` or `[p, m]` (columns); with `index`, H of the mean loss over those examples."""
        cols = v.reshape(self.p, -1).to(self.device, self.dtype)
        rows = cols.T.contiguous()  # one grad_outputs row per column of v (batched double backward)
        out = torch.zeros_like(cols)
        for x, y in self._batches(index):
            theta = self.theta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.loss_sum(theta, x, y), theta, create_graph=True)
            (hv,) = torch.autograd.grad(g, theta, grad_outputs=rows, is_grads_batched=True)
            out += hv.T
        out /= self.n if index is None else len(index)
        return out.reshape(v.shape)

    def mean_eigenvalue(self, probes: int = 16, seed: int = 0) -> float:
        """`trace(H) / p` by Hutchinson's estimator with seeded Rademacher probes."""
        gen = torch.Generator().manual_seed(seed)
        z = (torch.randint(0, 2, (self.p, probes), generator=gen) * 2 - 1).to(self.device, self.dtype)
        return float((z * self.hvp(z)).sum() / (probes * self.p))


@dataclass
class SolveResult:
    """Result of an iterative solve of `(H + damping I) x = b`.

    Attributes:
        x: solution `[p, m]`.
        iterations: iterations run.
        residual: max over columns of `||(H + damping I) x - b|| / ||b||` (true residual, one extra HVP).
        converged: whether the stopping tolerance was met within the iteration limit.
    """

    x: torch.Tensor
    iterations: int
    residual: float
    converged: bool

    def info(self) -> dict:
        return {"iterations": self.iterations, "residual": self.residual, "converged": self.converged}


def _residual(hvp: HVP, x: torch.Tensor, b: torch.Tensor, damping: float) -> float:
    r = hvp(x) + damping * x - b
    return float((r.norm(dim=0) / b.norm(dim=0).clamp_min(1e-300)).max()) if b.numel() else 0.0


def cg_solve(
    hvp: HVP, b: torch.Tensor, damping: float, max_iter: int = 200, tol: float = 1e-8
) -> SolveResult:
    """Conjugate gradients for `(H + damping I) x = b`, all columns of `b [p, m]` at once.

    Stops when every column's relative residual `||r|| / ||b||` is below `tol` or after `max_iter`.
    Needs `H + damping I` positive definite (raise damping for non-convex models).
    """
    b2 = b.reshape(b.shape[0], -1)
    x = torch.zeros_like(b2)
    r = b2.clone()
    d = r.clone()
    rs = (r * r).sum(0)
    bnorm = b2.norm(dim=0).clamp_min(1e-300)
    converged, it = bool((rs.sqrt() / bnorm).max() < tol) if b2.numel() else True, 0
    while not converged and it < max_iter:
        it += 1
        ad = hvp(d) + damping * d
        dad = (d * ad).sum(0)
        alpha = torch.where(dad > 0, rs / dad.clamp_min(1e-300), torch.zeros_like(dad))
        x += alpha * d
        r -= alpha * ad
        rs_new = (r * r).sum(0)
        converged = bool((rs_new.sqrt() / bnorm).max() < tol)
        d = r + torch.where(rs > 0, rs_new / rs.clamp_min(1e-300), torch.zeros_like(rs)) * d
        rs = rs_new
    return SolveResult(x.reshape(b.shape), it, _residual(hvp, x, b2, damping), converged)


def top_eigenvalue(
    hvp: HVP, p: int, iters: int = 50, seed: int = 0, dtype=torch.float64, device=None
) -> float:
    """Largest eigenvalue of H by power iteration from a seeded Gaussian start."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(p, 1, generator=gen, dtype=dtype).to(device or get_device())
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        w = hvp(v)
        lam = float((v * w).sum())
        v = w / w.norm().clamp_min(1e-300)
    return lam


def lissa_solve(
    hvp: HVP,
    b: torch.Tensor,
    damping: float,
    scale: float | None = None,
    max_iter: int = 5000,
    tol: float = 1e-8,
    sample_hvp: HVP | None = None,
) -> SolveResult:
    """LiSSA: `x_{j+1} = b/s + x_j - (H + damping I) x_j / s`, which converges to `(H + damping I)^{-1} b`.

    Args:
        hvp: full-data HVP (used for the scale estimate and the reported residual).
        b: right-hand sides `[p, m]`.
        damping: diagonal shift (> 0 needed for convergence on singular H).
        scale: `s`, must exceed `lambda_max(H + damping I) / 2`; default 1.1 x a power-iteration estimate.
        max_iter / tol: stop when `max ||x_{j+1} - x_j|| / ||x_{j+1}|| < tol` or after max_iter.
        sample_hvp: optional stochastic (mini-batch) HVP used inside the recursion (classic LiSSA).
    """
    b2 = b.reshape(b.shape[0], -1)
    if scale is None:
        scale = 1.1 * (top_eigenvalue(hvp, b2.shape[0], dtype=b2.dtype, device=b2.device) + damping)
    if scale <= 0:
        raise ConfigError(f"LiSSA scale must be positive, got {scale}.")
    step = sample_hvp or hvp
    x = b2 / scale
    converged, it = False, 0
    while not converged and it < max_iter:
        it += 1
        new = b2 / scale + x - (step(x) + damping * x) / scale
        change = float(((new - x).norm(dim=0) / new.norm(dim=0).clamp_min(1e-300)).max())
        x = new
        converged = change < tol
    return SolveResult(x.reshape(b.shape), it, _residual(hvp, x, b2, damping), converged)


class EigenInverse:
    """`(H + shift I)^{-1}` through `eigh(H)` in float64, for the exact-Hessian path.

    Raises:
        ConfigError: if `H + shift I` is not positive definite (increase damping).
    """

    def __init__(self, h: torch.Tensor, shift: float) -> None:
        evals, self.evecs = torch.linalg.eigh(h.to(torch.float64))
        self.denominator = evals + shift
        if float(self.denominator.min()) <= 0:
            raise ConfigError(
                f"H + {shift:g} I is not positive definite (smallest eigenvalue {float(evals.min()):.3g}); "
                "increase `damping`."
            )

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        """`(H + shift I)^{-1} g_i` for rows `g [b, p]` -> `[b, p]` float64."""
        rot = g.to(self.evecs) @ self.evecs
        return (rot / self.denominator) @ self.evecs.T

    def quadratic(self, g: torch.Tensor) -> torch.Tensor:
        """`g_i^T (H + shift I)^{-1} g_i` for rows `g [b, p]` -> `[b]` float64."""
        rot = g.to(self.evecs) @ self.evecs
        return (rot.square() / self.denominator).sum(1)
