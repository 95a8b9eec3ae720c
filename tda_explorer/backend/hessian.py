"""The Hessian of the mean training loss over a parameter subset: exact matrix, HVPs, CG and LiSSA solvers.

`H = (1/n) sum_i d^2 loss_i / d theta^2` (cross-entropy, no regulariser) over the flattened parameters of a
`ParamSubset` (order of `ParamSubset.names`), evaluated at the model's current weights. Solvers return
`x = (H + damping I)^{-1} b` (`backend.inverse` wraps them, and the dense inverse, as `InverseOperator`s); callers fold weight decay into `damping` (the L2 term `wd/2 ||theta||^2`
adds `wd I` to H). The exact path materialises `[p, p]` and is meant for small models (reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, hessian, jvp, vjp, vmap

from tda_explorer.backend.device import get_device
from tda_explorer.backend.grads import ParamSubset
from tda_explorer.backend.layers import batch_objective
from tda_explorer.errors import ConfigError
from tda_explorer.models.networks import head_prefix, model_head
from tda_explorer.models.tasks import task_of

HVP = Callable[[torch.Tensor], torch.Tensor]
CURVATURES = ("hessian", "ggn")


class LossHessian:
    """Hessian of the mean cross-entropy of `(inputs, labels)` w.r.t. a parameter subset.

    Args:
        model: the model (moved to `device`; its weights are read, never changed).
        inputs / labels: model-ready inputs `[n, ...]` and `int64 [n]`.
        params: ParamSubset spec ("all", "head", name prefixes).
        batch_size: examples per chunk of the Hessian / HVP computation.
        device / dtype: default `get_device()` and float64 (reference precision).
        curvature: "hessian" (the true Hessian of the loss) or "ggn" (the generalised Gauss-Newton
            `(1/n) sum_i J_i^T M_i J_i`, `J_i` the Jacobian of the outputs in the parameters and `M_i` the
            loss's Hessian in the outputs: `diag(p) - p p^T` for cross-entropy, 1 for half squared error).
            The GGN is positive semi-definite for any network, the Hessian is not on a non-convex one
            (CG then diverges); they are equal when the outputs are linear in the chosen parameters
            (logistic regression, last-layer influence). Used by `hvp`; `matrix` is always the Hessian.
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
        curvature: str = "hessian",
    ) -> None:
        if curvature not in CURVATURES:
            raise ConfigError(f"curvature must be one of {CURVATURES}, got {curvature!r}.")
        self.curvature = curvature
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
        self._head: _HeadParts | None | bool = None  # head-only closed form once built; False = unavailable

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
        return batch_objective(logits, y, "loss", task_of(self.model))

    def _batches(self, index: torch.Tensor | None = None):
        idx = torch.arange(self.n) if index is None else index
        for s in range(0, len(idx), self.batch_size):
            b = idx[s : s + self.batch_size]
            x = self.inputs[b].to(self.device)
            yield (x.to(self.dtype) if x.is_floating_point() else x), self.labels[b].to(self.device)

    def matrix(self) -> torch.Tensor:
        """The exact Hessian `[p, p]` (dtype of the object), symmetrised.

        When every chosen parameter belongs to the model's output layer `head` (an `nn.Linear` whose output
        is the logits: logistic regression, or last-layer influence), the Hessian is assembled in closed
        form, `H = (1/n) sum_i (diag(p_i) - p_i p_i^T) ⊗ a_i a_i^T` with `a_i = [head input, 1]` (see
        `_head_matrix`); otherwise by `torch.func.hessian`, batch by batch.
        """
        fast = self._head_matrix()
        if fast is not None:
            return fast
        h = torch.zeros(self.p, self.p, dtype=self.dtype, device=self.device)
        for x, y in self._batches():
            h += hessian(self.loss_sum)(self.theta, x, y)
        h /= self.n
        return (h + h.T) / 2

    def _head_parts(self) -> _HeadParts | None:
        """The head's augmented inputs and probabilities for a subset of `head.weight` / `head.bias` only,
        else None (built once).

        The cross-entropy's Hessian in the logits is `M_i = diag(p_i) - p_i p_i^T` and the logits are linear
        in the head's parameters `[W | b]`, so `H = (1/n) sum_i M_i ⊗ a_i a_i^T` with `a_i = [head input, 1]`.
        Only input coordinates that are non-zero for some example are kept (the others have zero rows and
        columns). The head's input is captured by a forward hook; if the model's output is not the head's
        output, None (the generic paths are used).
        """
        if self._head is not None:
            return self._head or None
        self._head = False
        prefix = head_prefix(self.model)
        head = model_head(self.model) if task_of(self.model) == "classification" else None
        names = set(self.subset.names)
        if not isinstance(head, nn.Linear) or not names <= {prefix + "weight", prefix + "bias"}:
            return None
        seen: dict[str, torch.Tensor] = {}

        def hook(_module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen["a"], seen["z"] = args[0].detach(), out

        feats, probs = [], []
        handle = head.register_forward_hook(hook)
        try:
            with torch.no_grad():
                for x, _ in self._batches():
                    params = {**self.frozen, **self._unflatten(self.theta)}
                    logits = functional_call(self.model, (params, self.buffers), (x,))
                    if logits is not seen.get("z") or seen["a"].ndim != 2:
                        return None
                    feats.append(seen["a"])
                    probs.append(torch.softmax(logits, dim=-1))
        finally:
            handle.remove()
        a = torch.cat(feats)
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], dim=1)
        p = torch.cat(probs)
        n_cls, d_aug = p.shape[1], a.shape[1]
        # flat position of augmented coordinate (c, i) (i = d_aug - 1 is the bias), in subset order
        where = torch.full((n_cls, d_aug), -1, dtype=torch.long, device=a.device)
        pos = 0
        for name in self.subset.names:
            if name == prefix + "weight":
                cols = torch.arange(d_aug - 1, device=a.device)
                where[:, :-1] = pos + torch.arange(n_cls, device=a.device)[:, None] * (d_aug - 1) + cols
                pos += n_cls * (d_aug - 1)
            else:
                where[:, -1] = pos + torch.arange(n_cls, device=a.device)
                pos += n_cls
        active = (a != 0).any(0)
        self._head = _HeadParts(a[:, active].contiguous(), p, where[:, active])
        return self._head

    def _head_matrix(self) -> torch.Tensor | None:
        """The exact head-only Hessian `[p, p]` (see `_head_parts`), else None.

        Block `(c, c')` is `(1/n) sum_i M_i[c, c'] a_i a_i^T`. Per class c, the blocks `c' >= c` of its row come
        from one product `a^T (M[:, c, c:] ⊙ a)` (`[d, (C - c) d]`; the others are their transposes), so the
        work is about `n C^2 d^2 / 2` multiply-adds; the kept rows and columns of the block matrix are then
        scattered into H (memory: the block matrix, its kept part and H, each about `[p, p]`).
        """
        parts = self._head_parts()
        if parts is None:
            return None
        a, p, where = parts.inputs.to(self.dtype), parts.probs.to(self.dtype), parts.where
        n_cls, d = where.shape
        blocks = torch.empty(n_cls, d, n_cls, d, dtype=self.dtype, device=a.device)  # [c, i, c', j]
        for c in range(n_cls):  # blocks (c, c') for c' >= c; (c', c) is the transpose
            rest = n_cls - c
            eye = (torch.arange(c, n_cls, device=a.device) == c).to(self.dtype)
            m_c = p[:, c : c + 1] * (eye - p[:, c:]) / self.n  # [n, C - c], the mean's 1/n folded in
            weighted = (m_c[:, :, None] * a[:, None, :]).reshape(len(a), rest * d)  # [n, (C - c) d]
            row = (a.T @ weighted).view(d, rest, d)  # [i, c', j]
            blocks[c, :, c:] = row
            blocks[c:, :, c] = row.permute(1, 2, 0)
        flat = where.reshape(-1)
        full = blocks.view(n_cls * d, n_cls * d)
        if flat.numel() == self.p and torch.equal(flat, torch.arange(self.p, device=flat.device)):
            return full.to(
                self.device
            )  # the subset is the whole head, in (class, coordinate) order: H itself
        keep = flat >= 0
        idx = flat[keep]
        h = torch.zeros(self.p, self.p, dtype=self.dtype, device=self.device)
        h[idx[:, None], idx[None, :]] = full[keep][:, keep]
        return h

    def _head_hvp(self, cols: torch.Tensor, parts: _HeadParts) -> torch.Tensor:
        """`H V` for columns `V [p, m]` of a head-only subset, without forming H.

        `V` as per-column head matrices `W [m, C, d]`; per chunk of examples, the logit directions
        `Z = a W^T` `[b, m, C]`, then `M_i Z = p ⊙ Z - p (p · Z)` and `H V = (1/n) sum_i (M_i Z_i) a_i^T`.
        Costs `4 n m C d` flops (the same as a matmul with the explicit `[p, p]` H when `p = C d`) and,
        taking `HVP_COLUMNS` columns at a time, `O(HVP_COLUMNS x (p + HVP_CHUNK x C))` memory beside the
        output instead of H's `p^2` (MNIST logistic regression: 246 MB in float32).
        """
        out = torch.empty_like(cols)
        for j in range(0, cols.shape[1], HVP_COLUMNS):
            out[:, j : j + HVP_COLUMNS] = self._head_hvp_block(cols[:, j : j + HVP_COLUMNS], parts)
        return out

    def _head_hvp_block(self, cols: torch.Tensor, parts: _HeadParts) -> torch.Tensor:
        """`_head_hvp` for one block of columns `[p, m]` (all at once)."""
        a, p, where = parts.inputs, parts.probs.to(cols.dtype), parts.where
        n_cls, d = where.shape
        valid = where >= 0
        w = cols.new_zeros(n_cls, d, cols.shape[1])  # [C, d, m]
        w[valid] = cols[where[valid]]
        m = cols.shape[1]
        w = w.permute(2, 0, 1).reshape(m * n_cls, d).contiguous()  # row (j, c): column j's class-c weights
        acc = cols.new_zeros(m * n_cls, d)
        for s in range(0, len(a), HVP_CHUNK):
            ab, pb = a[s : s + HVP_CHUNK].to(cols.dtype), p[s : s + HVP_CHUNK, None, :]
            z = (ab @ w.T).view(len(ab), m, n_cls)  # logit directions [b, m, C]
            u = pb * (z - (z * pb).sum(2, keepdim=True))
            acc.addmm_(u.view(len(ab), m * n_cls).T, ab)
        out = torch.zeros_like(cols)
        out[where[valid]] = acc.view(m, n_cls, d).permute(1, 2, 0)[valid] / self.n
        return out

    def hvp(self, v: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """`H v` for `v [p]` or `[p, m]` (columns); with `index`, H of the mean loss over those examples.

        Over all examples of a head-only subset (e.g. logistic regression) in closed form (`_head_hvp`:
        CG on MNIST logistic regression, p = 7,850, 500 right-hand sides, went from 651 s with double
        backward to 27 s with an explicit H, and needs no `[p, p]` matrix this way); otherwise by batched
        double backward.
        """
        cols = v.reshape(self.p, -1).to(self.device, self.dtype)
        parts = self._head_parts() if index is None else None
        if parts is not None:
            return self._head_hvp(cols, parts).reshape(v.shape)
        rows = cols.T.contiguous()  # one grad_outputs row per column of v (batched double backward)
        out = torch.zeros_like(cols)
        if self.curvature == "ggn":
            for x, y in self._batches(index):
                out += self._ggn_batch(rows, x, y).T
            out /= self.n if index is None else len(index)
            return out.reshape(v.shape)
        for x, y in self._batches(index):
            theta = self.theta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.loss_sum(theta, x, y), theta, create_graph=True)
            (hv,) = torch.autograd.grad(g, theta, grad_outputs=rows, is_grads_batched=True)
            out += hv.T
        out /= self.n if index is None else len(index)
        return out.reshape(v.shape)

    def _ggn_batch(self, rows: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`sum_i J_i^T M_i J_i v` over the batch for each row `v` of `rows [m, p]`: `[m, p]`.

        Forward-mode `J v` (vmapped over the rows), the loss's output Hessian `M_i` in closed form, then
        one batched vector-Jacobian product: about three forward/backward passes per row.
        """

        def outputs(theta: torch.Tensor) -> torch.Tensor:
            return functional_call(
                self.model, ({**self.frozen, **self._unflatten(theta)}, self.buffers), (x,)
            )

        jv = vmap(lambda v: jvp(outputs, (self.theta,), (v,))[1])(rows)  # [m, b, C]
        if task_of(self.model) == "classification":
            with torch.no_grad():
                p = torch.softmax(outputs(self.theta), dim=-1)  # [b, C]
            mjv = p * jv - p * (p * jv).sum(-1, keepdim=True)
        else:  # half squared error: M = I
            mjv = jv
        _, pullback = vjp(outputs, self.theta)
        return vmap(lambda u: pullback(u)[0])(mjv)

    def mean_eigenvalue(self, probes: int = 16, seed: int = 0) -> float:
        """`trace(H) / p` by Hutchinson's estimator with seeded Rademacher probes."""
        gen = torch.Generator().manual_seed(seed)
        z = (torch.randint(0, 2, (self.p, probes), generator=gen) * 2 - 1).to(self.device, self.dtype)
        return float((z * self.hvp(z)).sum() / (probes * self.p))


#: Examples per chunk of the closed-form head HVP (`LossHessian._head_hvp`).
HVP_CHUNK = 512
#: Columns (right-hand sides) per block of the closed-form head HVP: bounds its temporaries to about
#: `HVP_COLUMNS x (3 p + HVP_CHUNK x C x 3)` values (MNIST logistic regression: 16 MB in float32).
HVP_COLUMNS = 128


@dataclass
class _HeadParts:
    """Head-only closed form: augmented head inputs `[n, d]` (active coordinates), probabilities `[n, C]`,
    and the flat position `[C, d]` of each (class, coordinate) in the subset (-1 when not in it)."""

    inputs: torch.Tensor
    probs: torch.Tensor
    where: torch.Tensor


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
    r = hvp(x).add_(x, alpha=damping).sub_(b)
    return float((r.norm(dim=0) / b.norm(dim=0).clamp_min(1e-300)).max()) if b.numel() else 0.0


def cg_solve(
    hvp: HVP,
    b: torch.Tensor,
    damping: float,
    max_iter: int = 200,
    tol: float = 1e-8,
    precondition: HVP | None = None,
) -> SolveResult:
    """(Preconditioned) conjugate gradients for `(H + damping I) x = b`, all columns of `b [p, m]` at once.

    Each column's recursion is independent of the others, so a column whose relative residual
    `||r|| / ||b||` is below `tol` is retired (its solution kept, its state dropped) and the later
    Hessian-vector products run over the remaining columns only; stops when every column is retired or
    after `max_iter`. Needs `H + damping I` positive definite (raise damping for non-convex models).
    `precondition` maps columns `r [p, m]` to `M^{-1} r` for a symmetric positive definite `M` close to
    `H + damping I` (e.g. the EK-FAC inverse): the same solution in fewer iterations when `M` captures the
    spectrum. Memory: the solution and three `[p, active]` state buffers besides `hvp`'s own.
    """
    b2 = b.reshape(b.shape[0], -1)
    x = torch.zeros_like(b2)  # the solution of every column; active columns are updated in place
    active = torch.arange(b2.shape[1], device=b2.device)  # column of b2 of each state column
    r = b2.clone()
    z = r if precondition is None else precondition(r)
    d = z.clone()
    scratch = torch.empty_like(b2)  # the one [p, active] temporary of the column-wise products
    rz = _column_dot(r, z, scratch)
    bnorm = torch.linalg.vector_norm(b2, dim=0).clamp_min(1e-300)
    it = 0
    while True:
        done = torch.linalg.vector_norm(r, dim=0) / bnorm < tol
        if bool(done.any()):  # retire the converged columns
            keep = ~done
            active, r, d, rz, bnorm = active[keep], r[:, keep], d[:, keep], rz[keep], bnorm[keep]
            scratch, z = torch.empty_like(r), None
        if active.numel() == 0 or it >= max_iter:
            break
        it += 1
        ad = hvp(d).add_(d, alpha=damping)
        dad = _column_dot(d, ad, scratch)
        alpha = torch.where(dad > 0, rz / dad.clamp_min(1e-300), torch.zeros_like(dad))
        x.index_add_(1, active, torch.mul(d, alpha, out=scratch))
        r.addcmul_(ad, alpha, value=-1.0)
        del ad
        z = r if precondition is None else precondition(r)
        rz_new = _column_dot(r, z, scratch)
        d.mul_(torch.where(rz > 0, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz))).add_(z)
        rz = rz_new
    converged = active.numel() == 0
    del r, z, d, scratch  # before the residual's HVP
    return SolveResult(x.reshape(b.shape), it, _residual(hvp, x, b2, damping), converged)


def _column_dot(u: torch.Tensor, v: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Per-column dot products `[m]` of `u, v [p, m]`, with `scratch [p, m]` as the only temporary."""
    return torch.mul(u, v, out=scratch).sum(0)


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
