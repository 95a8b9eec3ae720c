"""Damped inverse curvature behind one interface: `InverseOperator`, one class per solver, one factory.

Every inverse-curvature method (influence's solvers, TRAK's kernel; Source builds its EK-FAC here too)
needs `A^{-1} = (C + (wd + lambda) I)^{-1}` for a PSD curvature C `[p, p]`: the Hessian or Gauss-Newton of
the *mean* training loss (units: loss per squared parameter unit), its K-FAC / EK-FAC approximation,
or TRAK's Gram matrix `Phi^T Phi` / `Phi Phi^T` of projected features (squared feature units). `wd` is the
weight decay (the L2 term `wd/2 ||theta||^2` adds `wd I` exactly) and `lambda` the damping.

- `InverseOperator.solve(g)`: rows `g [b, p]` -> `A^{-1} g_i` as rows `[b, p]`;
- `InverseOperator.quadratic(g, h=None)`: rows -> `g_i^T A^{-1} h_i` `[b]` (h = g: the quadratic form,
  computed directly where the solver can);
- `info`: what the solve used (absolute damping, per layer for K-FAC; iterations of cg / lissa).

`make_inverse(solver, problem, damping=..., damping_factor=..., weight_decay=...)` builds any of them:
"exact" (float64 Cholesky of the Hessian), "ekfac", "kfac", "cg", "lissa" (on exact Hessian- or
GGN-vector products), from a `CurvatureProblem`; "kernel" (TRAK) from a `KernelProblem`. Damping is
given once: an absolute `damping`, or None and a relative `damping_factor`, and `absolute_damping` turns
the latter into `damping_factor x mean eigenvalue` of the solver's own curvature (per layer for K-FAC /
EK-FAC, `trace / p` for exact, a Hutchinson estimate for cg / lissa, `trace / rank_bound` for the kernel).
(`backend.damping` holds that rule and `check_damping`, the one validation of these numbers.)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from tda_explorer.backend.curvature import KroneckerCurvature
from tda_explorer.backend.damping import absolute_damping, check_damping
from tda_explorer.backend.hessian import LossHessian, SolveResult, cg_solve, lissa_solve
from tda_explorer.errors import ConfigError

#: CG's default stopping rule: relative residual `||A x - g|| / ||g|| < CG_TOL` per right-hand side, at most
#: CG_MAX_ITER iterations: past a residual of about 1e-2 the LDS ranking no longer moved in our measurements
#: (RESULTS.md), and tighter tolerances cost 3-15x the time.
CG_TOL = 1e-2
CG_MAX_ITER = 100
#: LiSSA's iteration cap (its step is 1 / (1.1 x the top eigenvalue), so it needs more iterations than CG).
LISSA_MAX_ITER = 500


class InverseOperator(Protocol):
    """A damped inverse `A^{-1} = (C + (wd + lambda) I)^{-1}` (see the module docstring for shapes/units)."""

    info: dict

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        """Rows `g [b, p]` -> `A^{-1} g_i` rows `[b, p]`."""
        ...

    def quadratic(self, g: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """Rows `g, h [b, p]` -> `g_i^T A^{-1} h_i` `[b]` (h None: `h = g`)."""
        ...


@dataclass
class CurvatureProblem:
    """The training-loss curvature a solver inverts: of `model` at its weights over `inputs` (model-ready
    `[N, ...]`) and `labels [N]`, for the parameters `params`.

    Attributes:
        batch_size: examples per batch of factors / Hessian-vector products.
        dtype: of the exact / iterative solves (float64 for exact influence); None = `get_dtype()`.
        curvature: "ggn" or "hessian": what cg / lissa multiply with (exact always uses the Hessian;
            K-FAC / EK-FAC their sampled Fisher).
        seed / fisher_samples: of the Fisher's sampled labels (K-FAC / EK-FAC) and eigenvalue probes.
        progress: `(done, total, message)` while K-FAC / EK-FAC factors are fitted (per batch).
    """

    model: torch.nn.Module
    inputs: torch.Tensor
    labels: torch.Tensor
    params: str | Sequence[str] = "all"
    batch_size: int = 128
    dtype: torch.dtype | None = None
    curvature: str = "ggn"
    seed: int = 0
    fisher_samples: int = 1
    progress: Callable[[int, int, str], None] | None = None  # K-FAC / EK-FAC fitting, per batch of examples

    def hessian(self, curvature: str) -> LossHessian:
        """The exact curvature's matrix-free form (Hessian or GGN)."""
        dtype = self.dtype or torch.float64
        return LossHessian(self.model, self.inputs, self.labels, self.params, self.batch_size, dtype=dtype,
                           curvature=curvature)  # fmt: skip

    def kronecker(
        self, corrected: bool, damping: float | None, damping_factor: float, weight_decay: float
    ) -> KroneckerCurvature:
        """The unfitted K-FAC (`corrected=False`) / EK-FAC curvature of this problem."""
        return KroneckerCurvature(
            self.model, self.params, corrected=corrected, damping=damping, damping_factor=damping_factor,
            weight_decay=weight_decay, seed=self.seed, fisher_samples=self.fisher_samples,
            batch_size=self.batch_size,
        )  # fmt: skip


class ExactInverse:
    """`A^{-1}` through a float64 Cholesky factor `L L^T = H + shift I` of the dense Hessian `[p, p]`.

    Coordinates whose row of H is zero (e.g. never-lit pixels) decouple: their inverse is `1 / shift`.

    Raises:
        ConfigError: if `H + shift I` is not positive definite (increase damping).
    """

    name = "exact"

    def __init__(self, h: torch.Tensor, shift: float) -> None:
        h = h.to(torch.float64)
        self.active = (h != 0).any(0)
        self.shift = float(shift)
        a = h[self.active][:, self.active]
        a.diagonal().add_(shift)
        self.factor, info = torch.linalg.cholesky_ex(a)
        if int(info) != 0 or (shift <= 0 and not bool(self.active.all())):
            smallest = float(torch.linalg.eigvalsh(h)[0])
            raise ConfigError(
                f"H + {shift:g} I is not positive definite (smallest eigenvalue of H {smallest:.3g}); "
                "increase `damping`."
            )
        self.info: dict = {}

    @classmethod
    def build(
        cls, problem: CurvatureProblem, *, damping, damping_factor, weight_decay=0.0, **_
    ) -> ExactInverse:
        """Dense Hessian of the problem; relative damping x `trace(H) / p`."""
        hess = problem.hessian("hessian")
        h = hess.matrix()
        lam = absolute_damping(damping, damping_factor, lambda: float(h.trace()) / hess.p)
        op = cls(h, weight_decay + lam)
        op.info = {"damping": lam}
        return op

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        """Rows `g [b, p]` -> `[b, p]` float64."""
        g = g.to(self.factor)
        out = g / self.shift if self.shift > 0 else torch.zeros_like(g)
        out[:, self.active] = torch.cholesky_solve(g[:, self.active].T, self.factor).T
        return out

    def quadratic(self, g: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """`g_i^T A^{-1} h_i` `[b]` float64; for h = g `||L^{-1} g_i||^2` (+ the decoupled part)."""
        if h is not None:
            return (self.solve(g) * h.to(self.factor)).sum(1)
        g = g.to(self.factor)
        half = torch.linalg.solve_triangular(self.factor, g[:, self.active].T, upper=False)
        rest = g[:, ~self.active].square().sum(1) / self.shift if self.shift > 0 else 0.0
        return half.square().sum(0) + rest


class KroneckerInverse:
    """`A^{-1}` of a fitted K-FAC / EK-FAC curvature (`backend.curvature`), layer by layer in its eigenbasis."""

    name = "ekfac"
    corrected: ClassVar[bool] = True

    def __init__(self, curvature: KroneckerCurvature) -> None:
        self.curvature = curvature

    @classmethod
    def build(
        cls, problem: CurvatureProblem, *, damping, damping_factor, weight_decay=0.0, **_
    ) -> KroneckerInverse:
        """Fit the curvature on the problem's inputs; relative damping x each layer's mean eigenvalue."""
        curv = problem.kronecker(cls.corrected, damping, damping_factor, weight_decay)
        return cls(curv.fit(problem.inputs, problem.progress))

    @property
    def info(self) -> dict:
        """`{"damping": {layer: absolute damping}}` (read when asked: the damping may be re-tuned)."""
        return {"damping": {n: f.damping for n, f in self.curvature.factors_.items()}}

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        return self.curvature.inverse_hvp(g)

    def quadratic(self, g: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        if h is None:
            return self.curvature.quadratic(g)
        return (self.solve(g) * h.to(g)).sum(1)

    def set_damping_factor(self, factor: float) -> None:
        """Re-shift the fitted eigenvalues to `factor x` each layer's mean eigenvalue (no refit)."""
        self.curvature.damping_factor = factor
        self.curvature._set_damping()

    def set_weight_decay(self, weight_decay: float) -> None:
        """The L2 shift `wd` added to the eigenvalues besides the damping (no refit)."""
        check_damping(None, None, weight_decay)
        self.curvature.weight_decay = float(weight_decay)

    def bilinear_family(
        self, left: torch.Tensor, right: torch.Tensor
    ) -> Callable[[float, float], torch.Tensor]:
        """`(factor, wd) -> left (C + (wd + factor x mean eig) I)^{-1} right^T` `[b, m]`, for many shifts.

        `left [b, p]` and `right [m, p]` are rotated into each layer's eigenbasis once (`Q_S^T G Q_A`);
        a shift only changes the diagonal there, so each call costs one elementwise division and one
        `[b, d_out d_in] x [d_out d_in, m]` product per layer (the mean eigenvalue is each layer's, as in
        `set_damping_factor`; an absolute `damping` of the curvature is ignored: this is for relative ones).
        """
        curv = self.curvature
        curv._check(left)
        curv._check(right)
        parts = []
        for info in curv.layers:
            f = curv.factors_[info.name]
            (rot_l, _), (rot_r, _) = curv._rotated(left, info), curv._rotated(right, info)
            parts.append(
                (rot_l.flatten(1), rot_r.flatten(1), f.eigenvalues.flatten(), float(f.eigenvalues.mean()))
            )

        def at(factor: float, weight_decay: float) -> torch.Tensor:
            total = 0
            for rot_l, rot_r, eig, mean in parts:
                total = total + (rot_l / (eig + weight_decay + factor * mean).to(rot_l)) @ rot_r.T
            return total

        return at


class EKFACInverse(KroneckerInverse):
    """EK-FAC: eigenvalue-corrected Kronecker factors."""


class KFACInverse(KroneckerInverse):
    """K-FAC: eigenvalues `l_S[o] l_A[i]` of the Kronecker factors."""

    name = "kfac"
    corrected = False


class IterativeInverse:
    """`A^{-1} g` by an iterative solver on exact Hessian- (or GGN-) vector products; every solve's
    iterations / residual / convergence are appended to `info["solves"]` (a warning when not converged)."""

    name = ""

    def __init__(
        self,
        hessian: LossHessian,
        shift: float,
        max_iter: int | None = None,
        tol: float | None = None,
        precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.hessian, self.shift, self.max_iter, self.tol = hessian, shift, max_iter, tol
        self.precondition = precondition
        self.info: dict = {"solves": []}

    @classmethod
    def build(
        cls, problem: CurvatureProblem, *, damping, damping_factor, weight_decay=0.0, max_iter=None, tol=None,
        preconditioner: str | None = None, **_,
    ) -> IterativeInverse:  # fmt: skip
        """Matrix-free curvature of the problem; relative damping x its Hutchinson mean eigenvalue;
        `preconditioner="ekfac"` (cg) preconditions with the EK-FAC inverse of the same damping."""
        hess = problem.hessian(problem.curvature)
        lam = absolute_damping(damping, damping_factor, lambda: hess.mean_eigenvalue(seed=problem.seed))
        precondition = None
        if preconditioner == "ekfac":  # columns [p, m] -> EK-FAC (H + (wd + lam) I)^{-1} columns
            curv = problem.kronecker(True, lam, damping_factor, weight_decay).fit(problem.inputs)
            dtype = problem.dtype

            def precondition(r: torch.Tensor) -> torch.Tensor:
                return curv.inverse_hvp(r.T.to(dtype)).T.to(r.dtype)

        elif preconditioner is not None:
            raise ConfigError(f"preconditioner must be None or 'ekfac', got {preconditioner!r}.")
        op = cls(hess, weight_decay + lam, max_iter, tol, precondition)
        op.info["damping"] = lam
        return op

    def _run(self, rhs: torch.Tensor) -> SolveResult:
        raise NotImplementedError

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        res = self._run(g.T.to(self.hessian.dtype))
        self.info["solves"].append(res.info())
        if not res.converged:
            warnings.warn(
                f"influence/{self.name}: not converged after {res.iterations} iterations "
                f"(relative residual {res.residual:.2e}); raise max_iter or damping.",
                stacklevel=3,
            )
        return res.x.T.to(g.dtype)

    def quadratic(self, g: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        return (self.solve(g) * (g if h is None else h)).sum(1)


class CGInverse(IterativeInverse):
    """(Preconditioned) conjugate gradients, stopping at a relative residual of `tol` (default `CG_TOL`)."""

    name = "cg"

    def _run(self, rhs: torch.Tensor) -> SolveResult:
        return cg_solve(self.hessian.hvp, rhs, self.shift, max_iter=self.max_iter or CG_MAX_ITER,
                        tol=self.tol or CG_TOL, precondition=self.precondition)  # fmt: skip


class LissaInverse(IterativeInverse):
    """LiSSA, stopping at a relative change of `tol` (default 1e-8 in float64, 1e-5 in float32)."""

    name = "lissa"

    def _run(self, rhs: torch.Tensor) -> SolveResult:
        if self.precondition is not None:
            raise ConfigError("lissa takes no preconditioner.")
        tol = self.tol or (1e-8 if self.hessian.dtype == torch.float64 else 1e-5)
        return lissa_solve(
            self.hessian.hvp, rhs, self.shift, max_iter=self.max_iter or LISSA_MAX_ITER, tol=tol
        )


# ------------------------------------------------------------------------------------- TRAK's kernel
@dataclass
class KernelProblem:
    """TRAK's kernel system: a PSD Gram matrix `[n, n]` (`Phi^T Phi` with n = k, or `Phi Phi^T` with
    n = N); `rank_bound` = min(k, N) bounds its number of nonzero eigenvalues; `dtype` of the kept factor."""

    gram: torch.Tensor
    rank_bound: int
    dtype: torch.dtype


def mean_nonzero_eigenvalue(gram: torch.Tensor, rank_bound: int) -> float:
    """`trace(gram) / rank_bound`: with `gram` = `Phi^T Phi` or `Phi Phi^T` and `rank_bound` = min(k, N), the
    mean of the (at most min(k, N)) nonzero eigenvalues of `Phi^T Phi`."""
    return float(gram.diagonal().sum(dtype=torch.float64)) / max(1, rank_bound)


def pivoted_pseudo_factor(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Householder QR `(reflectors [n, r], tau [r])` (`torch.geqrf` form) of the permuted pivoted-Cholesky
    factor of a PSD float64 `gram [n, n]`, so that `pinv(gram) = Q (R R^T)^{-1} Q^T`.

    r is the numerical rank found by LAPACK's pivoted Cholesky (`dpstrf`, default tolerance), R is the
    upper triangle of `reflectors[:r]`. The pivoted Cholesky runs on the CPU (an `n x n` matrix).
    """
    import numpy as np
    from scipy.linalg import lapack

    a = gram.detach().to("cpu", torch.float64).numpy()
    c, piv, rank, info = lapack.dpstrf(a, lower=1)
    if info < 0:
        raise RuntimeError(f"LAPACK dpstrf rejected argument {-info} (matrix shape {tuple(a.shape)}).")
    lower = torch.from_numpy(np.tril(c[:, :rank]))
    factor = torch.empty_like(lower)
    factor[torch.from_numpy(piv.astype(np.int64) - 1)] = lower  # gram = factor @ factor.T
    reflectors, tau = torch.geqrf(factor.to(gram.device))
    return reflectors, tau


class KernelInverse:
    """`(gram + lambda I)^{-1}` for a PSD Gram matrix `[n, n]`, without forming the inverse.

    Factorises once in float64 and keeps the factor in `dtype`, or in float64 when lambda = 0 (the
    unregularised system can be arbitrarily ill-conditioned; with lambda = c x the mean nonzero eigenvalue
    the condition number is at most `min(k, N) / c + 1`, safe in float32). A positive definite matrix gets a
    Cholesky factor; a singular one (lambda = 0 and rank deficient) gets the Moore-Penrose pseudo-inverse
    from a rank-revealing pivoted Cholesky `P^T A P = L L^T` (LAPACK `pstrf`) and a Householder QR of
    `P L = Q R` (Q kept as its reflectors): `A^+ = Q (R R^T)^{-1} Q^T`, applied with two triangular solves
    (condition number of R, not R^2); it equals `pinv(A, hermitian=True)` when the spectrum has a gap at
    the rank (tested), at a fraction of the eigendecomposition's cost. Solving costs `O(n^2 c)` for c
    right-hand sides.
    """

    name = "kernel"

    def __init__(self, gram: torch.Tensor, damping: float, dtype: torch.dtype) -> None:
        gram = gram.to(torch.float64, copy=True)
        gram.diagonal().add_(damping)
        factor, info = torch.linalg.cholesky_ex(gram)
        self.cholesky = int(info) == 0
        keep = torch.float64 if damping == 0 else dtype
        if self.cholesky:
            self.matrix, self.tau = factor.to(keep), None
        else:
            reflectors, self.tau = pivoted_pseudo_factor(gram)
            self.matrix = reflectors.to(keep)
            self.tau = self.tau.to(keep)
        self.info = {"damping": damping}

    @classmethod
    def build(
        cls, problem: KernelProblem, *, damping, damping_factor, weight_decay=0.0, **_
    ) -> KernelInverse:
        """Relative damping x the mean nonzero eigenvalue `trace / rank_bound`."""
        gram = problem.gram
        lam = absolute_damping(
            damping, damping_factor, lambda: mean_nonzero_eigenvalue(gram, problem.rank_bound)
        )
        return cls(gram, lam + weight_decay, problem.dtype)

    @property
    def rank(self) -> int:
        """Rank of the factorised matrix (n for a positive definite one)."""
        return self.matrix.shape[1]

    def _solve_columns(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.matrix)
        if self.cholesky:
            return torch.cholesky_solve(x, self.matrix)
        h, r = self.matrix, self.rank
        if r == 0:
            return torch.zeros_like(x)
        tri = h[:r]  # R in its upper triangle (solve_triangular reads only that half)
        y = torch.ormqr(h, self.tau, x, transpose=True)[:r]  # Q^T x
        y = torch.linalg.solve_triangular(tri, y, upper=True)  # R^{-1} Q^T x
        y = torch.linalg.solve_triangular(tri.mT, y, upper=False)  # (R R^T)^{-1} Q^T x
        return torch.ormqr(h, self.tau, torch.cat([y, y.new_zeros(len(x) - r, y.shape[1])]))

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        """Rows `g [b, n]` -> `(gram + lambda I)^{-1} g_i` rows `[b, n]` (pseudo-inverse when singular), in the
        factor's dtype."""
        return self._solve_columns(g.T).T

    def quadratic(self, g: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """`g_i^T (gram + lambda I)^{-1} h_i` `[b]` in `g`'s dtype."""
        return self.solve(g).to(g).mul(g if h is None else h).sum(1)


# ------------------------------------------------------------------------------------- the factory
INVERSES: dict[str, Any] = {
    "exact": ExactInverse,
    "ekfac": EKFACInverse,
    "kfac": KFACInverse,
    "cg": CGInverse,
    "lissa": LissaInverse,
    "kernel": KernelInverse,
}


def make_inverse(
    solver: str,
    problem: CurvatureProblem | KernelProblem,
    *,
    damping: float | None,
    damping_factor: float,
    weight_decay: float = 0.0,
    **options: Any,
) -> InverseOperator:
    """The damped inverse of `problem`'s curvature by `solver` (see the module docstring).

    Args:
        solver: one of `INVERSES` ("kernel" takes a `KernelProblem`, the others a `CurvatureProblem`).
        damping / damping_factor: absolute damping, or None and the relative factor (`absolute_damping`).
        weight_decay: added to the curvature's diagonal as is (never scaled).
        options: cg / lissa: `max_iter`, `tol`; cg: `preconditioner` (None or "ekfac").
    """
    if solver not in INVERSES:
        raise ConfigError(f"inverse solver {solver!r} is not one of {sorted(INVERSES)}.")
    kernel = solver == "kernel"
    if isinstance(problem, KernelProblem) != kernel:
        want = "KernelProblem" if kernel else "CurvatureProblem"
        raise ConfigError(f"solver {solver!r} needs a {want}, got {type(problem).__name__}.")
    check_damping(damping, damping_factor, weight_decay)
    return INVERSES[solver].build(
        problem, damping=damping, damping_factor=damping_factor, weight_decay=weight_decay, **options
    )
