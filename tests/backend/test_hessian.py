"""Exact Hessian, HVPs, and the CG / LiSSA solvers against a direct solve."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tda_explorer.backend.hessian import LossHessian, cg_solve, lissa_solve, top_eigenvalue
from tda_explorer.backend.inverse import ExactInverse
from tda_explorer.errors import ConfigError
from tda_explorer.models import MLPConfig, build_model

CPU = torch.device("cpu")


def tiny_problem():
    torch.manual_seed(0)
    model = build_model(MLPConfig(hidden=(5,)), (6,), 3).double()
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    return model, x, y


def test_exact_hessian_matches_autograd_and_hvp():
    model, x, y = tiny_problem()
    hess = LossHessian(model, x, y, batch_size=16, device=CPU)
    h = hess.matrix()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def mean_loss(theta):
        parts, pos = {}, 0
        for n, s in zip(names, shapes, strict=True):
            parts[n] = theta[pos : pos + s.numel()].view(s)
            pos += s.numel()
        return F.cross_entropy(torch.func.functional_call(model, parts, (x,)), y)

    want = torch.autograd.functional.hessian(mean_loss, hess.theta)
    torch.testing.assert_close(h, want, rtol=1e-9, atol=1e-11)
    v = torch.randn(hess.p, 4, dtype=torch.float64)
    torch.testing.assert_close(hess.hvp(v), h @ v, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(hess.hvp(v[:, 0]), h @ v[:, 0], rtol=1e-9, atol=1e-11)
    assert (
        abs(hess.mean_eigenvalue(probes=400) - float(h.trace()) / hess.p) < 0.25 * float(h.trace()) / hess.p
    )
    assert (
        abs(top_eigenvalue(hess.hvp, hess.p, iters=200, device=CPU) - float(torch.linalg.eigvalsh(h)[-1]))
        < 1e-6
    )


def test_cg_and_lissa_converge_to_exact_solve():
    model, x, y = tiny_problem()
    hess = LossHessian(model, x, y, device=CPU)
    h = hess.matrix()
    damping = 0.05 + max(0.0, -float(torch.linalg.eigvalsh(h)[0]))
    b = torch.randn(hess.p, 3, dtype=torch.float64)
    exact = torch.linalg.solve(h + damping * torch.eye(hess.p, dtype=torch.float64), b)
    cg = cg_solve(hess.hvp, b, damping, max_iter=500, tol=1e-10)
    assert cg.converged and cg.residual < 1e-9 and cg.iterations < 500
    torch.testing.assert_close(cg.x, exact, rtol=1e-7, atol=1e-8)
    lissa = lissa_solve(hess.hvp, b, damping, max_iter=20000, tol=1e-11)
    assert lissa.converged and lissa.residual < 1e-6
    torch.testing.assert_close(lissa.x, exact, rtol=1e-5, atol=1e-6)
    short = cg_solve(hess.hvp, b, damping, max_iter=2, tol=1e-12)
    assert not short.converged and short.iterations == 2 and short.residual > 1e-12


def test_preconditioned_cg_reaches_the_same_solution_in_fewer_iterations():
    """An exact preconditioner solves in one step; a diagonal one (Jacobi) beats plain CG on a skewed H."""
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=torch.float64))
    h = q @ torch.diag(torch.logspace(-3, 2, 40, dtype=torch.float64)) @ q.T
    h = h + torch.diag(torch.logspace(0, 3, 40, dtype=torch.float64))  # a strong diagonal part
    b = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    damping = 1e-2
    a = h + damping * torch.eye(40, dtype=torch.float64)
    exact = torch.linalg.solve(a, b)
    plain = cg_solve(lambda v: h @ v, b, damping, max_iter=500, tol=1e-10)
    a_inv = torch.linalg.inv(a)
    perfect = cg_solve(lambda v: h @ v, b, damping, max_iter=500, tol=1e-10, precondition=lambda r: a_inv @ r)
    jacobi = cg_solve(
        lambda v: h @ v, b, damping, max_iter=500, tol=1e-10, precondition=lambda r: r / a.diagonal()[:, None]
    )
    for res in (plain, perfect, jacobi):
        assert res.converged
        torch.testing.assert_close(res.x, exact, rtol=1e-7, atol=1e-8)
    assert perfect.iterations == 1 and jacobi.iterations < plain.iterations


def test_cg_retires_converged_columns_and_keeps_their_solutions():
    """Columns converge at different rates (an eigenvector converges in one step): the HVPs then run over
    the remaining columns only, every column still meets the tolerance, and a zero column stays zero."""
    gen = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    h = q @ torch.diag(torch.logspace(-2, 2, 30, dtype=torch.float64)) @ q.T
    b = torch.cat([q[:, :1], torch.randn(30, 2, generator=gen, dtype=torch.float64), torch.zeros(30, 1)], 1)
    widths: list[int] = []

    def hvp(v: torch.Tensor) -> torch.Tensor:
        widths.append(v.shape[1])
        return h @ v

    res = cg_solve(hvp, b, 1e-3, max_iter=500, tol=1e-10)
    assert res.converged and res.residual < 1e-9
    exact = torch.linalg.solve(h + 1e-3 * torch.eye(30, dtype=torch.float64), b)
    torch.testing.assert_close(res.x, exact, rtol=1e-7, atol=1e-8)
    assert widths[0] == 3 and widths[1] == 2 and widths[-2] <= 2  # the zero column never entered
    assert res.iterations == len(widths) - 1  # the last HVP is the reported residual's, over all 4


def test_exact_inverse_solves_and_rejects_indefinite():
    a = torch.randn(6, 6, dtype=torch.float64)
    h = a @ a.T
    inv = ExactInverse(h, 0.3)
    g = torch.randn(4, 6, dtype=torch.float64)
    want = torch.linalg.solve(h + 0.3 * torch.eye(6, dtype=torch.float64), g.T).T
    torch.testing.assert_close(inv.solve(g), want)
    torch.testing.assert_close(inv.quadratic(g), (want * g).sum(1))
    try:
        ExactInverse(-h, 0.0)
    except ConfigError as e:
        assert "damping" in str(e)
    else:
        raise AssertionError("an indefinite H must be refused")


def test_head_only_hessian_closed_form_matches_autodiff():
    """`matrix()` assembles a head-only Hessian in closed form; it must equal torch.func.hessian's."""
    from torch.func import hessian

    from tda_explorer.models import LogRegConfig

    torch.manual_seed(1)
    cases = [(LogRegConfig(), (1, 3, 4), "all"), (MLPConfig(hidden=(5,)), (6,), "head")]
    cases += [(MLPConfig(hidden=(5,)), (6,), ["head.bias"]), (MLPConfig(hidden=(5,)), (6,), ["head.weight"])]
    for cfg, shape, params in cases:
        model = build_model(cfg, shape, 3).double()
        x = torch.randn(30, *shape, dtype=torch.float64)
        x.view(30, -1)[:, :4] = 0  # never-active inputs: zero rows of H
        y = torch.randint(0, 3, (30,))
        hess = LossHessian(model, x, y, params, batch_size=8, device=CPU)
        fast = hess._head_matrix()
        assert fast is not None
        slow = sum(hessian(hess.loss_sum)(hess.theta, xb, yb) for xb, yb in hess._batches()) / hess.n
        torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(hess.matrix(), fast)
    mlp_all = LossHessian(build_model(MLPConfig(hidden=(5,)), (6,), 3).double(), x, y, device=CPU)
    assert mlp_all._head_matrix() is None  # hidden-layer parameters: generic path


def test_exact_inverse_with_decoupled_coordinates():
    a = torch.randn(6, 6, dtype=torch.float64)
    h = a @ a.T
    h[2, :] = h[:, 2] = 0  # a coordinate no example touches
    inv = ExactInverse(h, 0.3)
    g = torch.randn(4, 6, dtype=torch.float64)
    want = torch.linalg.solve(h + 0.3 * torch.eye(6, dtype=torch.float64), g.T).T
    torch.testing.assert_close(inv.solve(g), want)
    torch.testing.assert_close(inv.quadratic(g), (want * g).sum(1))


@pytest.mark.parametrize("params", ["all", ["head.weight"], ["head.bias"]])
def test_hvp_uses_the_closed_form_head_hessian_when_it_exists(monkeypatch, params):
    """Head-only subsets: HVPs in closed form (no [p, p] matrix), equal to double backward and to H @ v."""
    import tda_explorer.backend.hessian as hessian_module
    from tda_explorer.models import LogRegConfig

    torch.manual_seed(2)
    model = build_model(LogRegConfig(), (1, 3, 4), 3).double()
    x, y = torch.randn(30, 1, 3, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    x.view(30, -1)[:, :2] = 0  # never-active inputs
    monkeypatch.setattr(hessian_module, "HVP_CHUNK", 7)  # several chunks of examples
    monkeypatch.setattr(hessian_module, "HVP_COLUMNS", 2)  # and of columns (the last one partial)
    fast = LossHessian(model, x, y, params, batch_size=8, device=CPU)
    v = torch.randn(fast.p, 5, dtype=torch.float64)
    got = fast.hvp(v)
    assert fast._head_parts() is not None
    every = torch.arange(30)  # through `index`: the generic double-backward path over all examples
    torch.testing.assert_close(got, fast.hvp(v, every), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got, fast.matrix() @ v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fast.hvp(v[:, 0]), got[:, 0])
    mlp = LossHessian(build_model(MLPConfig(hidden=(5,)), (6,), 3).double(), *tiny_problem()[1:], device=CPU)
    mlp.hvp(torch.randn(mlp.p, dtype=torch.float64))
    assert mlp._head_parts() is None  # hidden layers: no closed form


def test_ggn_hvp_is_the_gauss_newton_matrix_and_psd_where_the_hessian_is_not():
    """curvature="ggn": `H v = (1/n) sum_i J_i^T (diag p_i - p_i p_i^T) J_i v`, PSD on a tanh MLP whose
    Hessian has negative eigenvalues; equal to the Hessian for logistic regression."""
    from torch import nn
    from torch.func import functional_call, jacrev

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, y = torch.randn(40, 5, dtype=torch.float64), torch.randint(0, 3, (40,))
    cpu = torch.device("cpu")
    ggn = LossHessian(model, x, y, "all", batch_size=16, device=cpu, curvature="ggn")
    jac = jacrev(lambda t: functional_call(model, ggn._unflatten(t), (x,)))(ggn.theta)  # [n, C, p]
    p = torch.softmax(model(x), -1)
    m = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    g = torch.einsum("ncp,ncd,ndq->pq", jac, m, jac) / len(y)
    v = torch.randn(ggn.p, 4, dtype=torch.float64)
    torch.testing.assert_close(ggn.hvp(v), g @ v)
    assert torch.linalg.eigvalsh(g).min() > -1e-12
    assert torch.linalg.eigvalsh(LossHessian(model, x, y, "all", device=cpu).matrix()).min() < -1e-3
    lin = nn.Sequential(nn.Linear(5, 3)).double()
    a = LossHessian(lin, x, y, "all", batch_size=16, device=cpu, curvature="ggn")
    b = LossHessian(lin, x, y, "all", batch_size=16, device=cpu)
    a._head = b._head = False  # the generic paths (the closed form is shared)
    torch.testing.assert_close(a.hvp(v[:18]), b.hvp(v[:18]))
    with pytest.raises(ConfigError):
        LossHessian(lin, x, y, "all", curvature="fisher")
