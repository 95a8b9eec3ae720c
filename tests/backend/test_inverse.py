"""Every InverseOperator against a dense inverse on a tiny problem; the factory; the damping rule."""

from __future__ import annotations

import pytest
import torch

from tda_explorer.backend.damping import absolute_damping, check_damping
from tda_explorer.backend.grads import ParamSubset
from tda_explorer.backend.hessian import LossHessian
from tda_explorer.backend.inverse import (
    CurvatureProblem,
    KernelInverse,
    KernelProblem,
    KroneckerInverse,
    make_inverse,
    mean_nonzero_eigenvalue,
)
from tda_explorer.backend.layers import find_layers, flat_to_layer
from tda_explorer.errors import ConfigError
from tda_explorer.models import MLPConfig, build_model

WD = 0.05


@pytest.fixture(scope="module")
def problem() -> CurvatureProblem:
    """A tiny MLP (p = 3 x 5 + 5 + 5 x 3 + 3 = 38) on 40 random examples, float64 on the CPU."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(MLPConfig(hidden=(5,)), (3,), 3).double()
        x = torch.randn(40, 3, dtype=torch.float64)
        y = torch.randint(0, 3, (40,))
    return CurvatureProblem(model, x, y, "all", batch_size=16, dtype=torch.float64, curvature="ggn")


@pytest.fixture(autouse=True)
def cpu64(monkeypatch):
    monkeypatch.setenv("TDA_DTYPE", "float64")
    monkeypatch.setenv("TDA_DEVICE", "cpu")


def dense_solve(matrix: torch.Tensor, shift: float, g: torch.Tensor) -> torch.Tensor:
    """Rows `(matrix + shift I)^{-1} g_i` by a dense solve (the reference)."""
    eye = torch.eye(len(matrix), dtype=torch.float64)
    return torch.linalg.solve(matrix + shift * eye, g.T.double()).T


def rows(p: int, n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def check_operator(op, want_solve, g, h, rtol=1e-8, atol=1e-10):
    torch.testing.assert_close(op.solve(g).double(), want_solve, rtol=rtol, atol=atol)
    torch.testing.assert_close(op.quadratic(g).double(), (want_solve * g).sum(1), rtol=rtol, atol=atol)
    torch.testing.assert_close(op.quadratic(g, h).double(), (want_solve * h).sum(1), rtol=rtol, atol=atol)


def test_exact_inverse_equals_a_dense_solve_with_relative_damping(problem):
    h = LossHessian(problem.model, problem.inputs, problem.labels, "all", dtype=torch.float64).matrix()
    op = make_inverse("exact", problem, damping=None, damping_factor=20.0, weight_decay=WD)  # H is indefinite
    lam = 20.0 * float(h.trace()) / len(h)
    assert op.info["damping"] == pytest.approx(lam)
    g, other = rows(len(h)), rows(len(h), seed=2)
    check_operator(op, dense_solve(h, WD + lam, g), g, other)


@pytest.mark.parametrize(("solver", "damping", "tol"), [("cg", 0.2, 1e-12), ("lissa", 1.0, 1e-13)])
def test_iterative_inverses_converge_to_the_dense_solve_of_their_curvature(problem, solver, damping, tol):
    hess = problem.hessian("ggn")
    p = hess.p
    ggn = torch.stack([hess.hvp(e[:, None])[:, 0] for e in torch.eye(p, dtype=torch.float64)], 1)
    op = make_inverse(
        solver, problem, damping=damping, damping_factor=1.0, weight_decay=WD, max_iter=20000, tol=tol
    )
    g, other = rows(p), rows(p, seed=2)
    check_operator(op, dense_solve(ggn, WD + damping, g), g, other, rtol=1e-6, atol=1e-8)
    assert op.info["damping"] == damping and all(s["converged"] for s in op.info["solves"])


def test_preconditioned_cg_gives_the_same_solution_in_fewer_iterations(problem):
    kw = {"damping": 0.05, "damping_factor": 1.0, "weight_decay": WD, "max_iter": 500, "tol": 1e-10}
    plain = make_inverse("cg", problem, **kw)
    pre = make_inverse("cg", problem, preconditioner="ekfac", **kw)
    g = rows(plain.hessian.p)
    torch.testing.assert_close(pre.solve(g), plain.solve(g), rtol=1e-7, atol=1e-9)
    assert pre.info["solves"][-1]["iterations"] <= plain.info["solves"][-1]["iterations"]


def kronecker_dense(op: KroneckerInverse, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The operator's own curvature as a dense `[p, p]` (flat-gradient order) and its per-coordinate shift."""
    curv = op.curvature
    dense = torch.zeros(p, p, dtype=torch.float64)
    shift = torch.zeros(p, dtype=torch.float64)
    for info in find_layers(curv.model, ParamSubset.resolve(curv.model, "all")):
        f = curv.factors_[info.name]
        q = torch.kron(f.q_s, f.q_a)
        idx = flat_to_layer(torch.arange(p, dtype=torch.float64)[None], info).reshape(-1).long()
        dense[idx[:, None], idx[None, :]] = q @ torch.diag(f.eigenvalues.flatten()) @ q.T
        shift[idx] = curv.weight_decay + f.damping
    return dense, shift


@pytest.mark.parametrize("solver", ["ekfac", "kfac"])
def test_kronecker_inverses_equal_the_dense_inverse_of_their_block_curvature(problem, solver):
    op = make_inverse(solver, problem, damping=None, damping_factor=0.1, weight_decay=WD)
    p = ParamSubset.resolve(problem.model, "all").numel
    dense, shift = kronecker_dense(op, p)
    g, other = rows(p), rows(p, seed=2)
    want = torch.linalg.solve(dense + torch.diag(shift), g.T).T
    check_operator(op, want, g, other)
    for name, f in op.curvature.factors_.items():  # relative damping: 0.1 x each layer's mean eigenvalue
        assert op.info["damping"][name] == pytest.approx(0.1 * float(f.eigenvalues.mean()))
    op.set_damping_factor(1.0)  # re-shifting the fitted eigenvalues changes the inverse accordingly
    dense, shift = kronecker_dense(op, p)
    check_operator(op, torch.linalg.solve(dense + torch.diag(shift), g.T).T, g, other)


@pytest.mark.parametrize("solver", ["ekfac", "kfac"])
def test_bilinear_family_equals_reshifted_solves(problem, solver):
    """One rotation, many shifts: `bilinear_family(c, wd)` = `solve` after `set_damping_factor(c)` /
    `set_weight_decay(wd)`, at every candidate (what damping_factor="auto" reads)."""
    op = make_inverse(solver, problem, damping=None, damping_factor=0.1, weight_decay=WD)
    p = ParamSubset.resolve(problem.model, "all").numel
    left, right = rows(p, n=5), rows(p, n=3, seed=2)
    at = op.bilinear_family(left, right)
    for factor, wd in ((0.001, WD), (0.3, 0.0), (3.0, WD)):
        op.set_damping_factor(factor)
        op.set_weight_decay(wd)
        assert at(factor, wd).shape == (5, 3)
        torch.testing.assert_close(at(factor, wd), op.solve(left) @ right.T, rtol=1e-8, atol=1e-10)
    assert not torch.allclose(at(0.3, 0.0), at(0.3, WD))  # the weight decay is part of the shift
    with pytest.raises(ConfigError, match="weight_decay must be >= 0"):
        op.set_weight_decay(-1.0)


def test_kernel_inverse_regularised_and_singular():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 30, generator=gen, dtype=torch.float64)
    gram, g = x.T @ x, torch.randn(3, 30, generator=gen, dtype=torch.float64)  # rank 10 < 30
    op = make_inverse("kernel", KernelProblem(gram, 10, torch.float32), damping=None, damping_factor=0.5)
    lam = 0.5 * mean_nonzero_eigenvalue(gram, 10)
    assert op.info["damping"] == pytest.approx(lam) and op.cholesky and op.matrix.dtype == torch.float32
    check_operator(op, dense_solve(gram, lam, g), g, g.flip(0), rtol=1e-4, atol=1e-5)
    singular = KernelInverse(gram, 0.0, torch.float32)  # lambda = 0: pseudo-inverse, float64 factor
    assert not singular.cholesky and singular.rank == 10 and singular.matrix.dtype == torch.float64
    want = (torch.linalg.pinv(gram, hermitian=True) @ g.T).T
    torch.testing.assert_close(singular.solve(g), want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("rank", [0, 1, 7, 20])
def test_kernel_pseudo_inverse_at_any_rank(rank):
    gen = torch.Generator().manual_seed(rank)
    x = (
        torch.randn(50, rank, generator=gen, dtype=torch.float64)
        @ torch.randn(rank, 30, generator=gen).double()
    )
    gram, g = x.T @ x, torch.randn(4, 30, generator=gen, dtype=torch.float64)
    op = KernelInverse(gram, 0.0, torch.float32)
    want = (torch.linalg.pinv(gram, hermitian=True) @ g.T).T
    torch.testing.assert_close(op.solve(g), want, rtol=1e-8, atol=1e-10)


def test_factory_refuses_bad_input_with_the_choices(problem):
    with pytest.raises(
        ConfigError, match=r"not one of \['cg', 'ekfac', 'exact', 'kernel', 'kfac', 'lissa'\]"
    ):
        make_inverse("newton", problem, damping=0.1, damping_factor=1.0)
    with pytest.raises(ConfigError, match="needs a KernelProblem"):
        make_inverse("kernel", problem, damping=0.1, damping_factor=1.0)
    with pytest.raises(ConfigError, match="needs a CurvatureProblem"):
        make_inverse("exact", KernelProblem(torch.eye(2), 2, torch.float64), damping=0.1, damping_factor=1.0)
    with pytest.raises(ConfigError, match="damping must be >= 0"):
        make_inverse("exact", problem, damping=-1.0, damping_factor=1.0)


def test_one_damping_rule():
    calls = []

    def mean() -> float:
        calls.append(1)
        return 4.0

    assert absolute_damping(0.3, 2.0, mean) == 0.3 and not calls  # absolute: the mean is never computed
    assert absolute_damping(None, 0.5, mean) == 2.0 and calls == [1]
    assert absolute_damping(None, 0.5, 4.0) == 2.0
    for bad in [(-1.0, None, None), (None, float("nan"), None), (None, 1.0, -0.1)]:
        with pytest.raises(ConfigError):
            check_damping(*bad)
