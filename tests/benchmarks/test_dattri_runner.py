"""dattri peer runner: sign and scale against direct autograd computations, shapes, every method runs."""

from __future__ import annotations

import json

import dattri  # noqa: F401  - the test extra (requirements-bench.txt); `make test` installs it
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from benchmarks.peers.dattri_runner import METHODS, PEER_METHODS, run_dattri
from tda_explorer.models import LogRegConfig, build_model
from tests.fixtures import digits_gd_problem

N_TRAIN, N_TEST, DAMPING, LR = 60, 10, 1e-2, 0.5


def factory() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(LogRegConfig(), (1, 8, 8), 10)


@pytest.fixture(scope="module")
def problem():
    """60/10 digits, softmax regression trained by 300 full-batch GD steps; 3 trajectory checkpoints."""
    return digits_gd_problem(factory, N_TRAIN, 100, N_TEST, steps=300, lr=LR, checkpoint_every=100)


def per_example_grads(model, x, y) -> torch.Tensor:
    """`[n, n_params]` gradients of each example's cross-entropy, by a plain autograd loop."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def test_peer_methods_map_to_runner_methods():
    assert set(PEER_METHODS.values()) == set(METHODS)
    assert PEER_METHODS["influence/exact"] == "if_explicit" and PEER_METHODS["trak"] == "trak"


def test_unknown_method_raises(problem):
    _, ckpts, tr_x, tr_y, te_x, te_y = problem
    with pytest.raises(ValueError, match="unknown dattri method"):
        run_dattri("if_arnoldi", factory, ckpts, tr_x, tr_y, te_x, te_y)


def test_grad_dot_is_plain_gradient_dot_product(problem):
    model, ckpts, tr_x, tr_y, te_x, te_y = problem
    model.load_state_dict(ckpts[-1])
    expected = (per_example_grads(model, te_x, te_y) @ per_example_grads(model, tr_x, tr_y).T).numpy()
    result = run_dattri("grad_dot", factory, ckpts, tr_x, tr_y, te_x, te_y)
    assert result.scores.shape == (N_TEST, N_TRAIN) and result.scores.dtype == np.float32
    # positive = helps: same sign and value as g_test . g_train (no projection by default)
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_tracin_is_learning_rate_weighted_sum_over_checkpoints(problem):
    model, ckpts, tr_x, tr_y, te_x, te_y = problem
    expected = 0
    for state in ckpts:
        model.load_state_dict(state)
        expected = expected + LR * (
            per_example_grads(model, te_x, te_y) @ per_example_grads(model, tr_x, tr_y).T
        )
    result = run_dattri("tracin", factory, ckpts, tr_x, tr_y, te_x, te_y, lrs=[LR] * len(ckpts))
    np.testing.assert_allclose(
        result.scores, expected.numpy(), rtol=1e-4, atol=1e-5 * expected.abs().max().item()
    )


def test_if_explicit_matches_damped_inverse_hessian(problem):
    model, ckpts, tr_x, tr_y, te_x, te_y = problem
    model.load_state_dict(ckpts[-1])
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def mean_train_loss(flat: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = flat[i : i + shape.numel()].reshape(shape)
            i += shape.numel()
        return F.cross_entropy(torch.func.functional_call(model, params, (tr_x,)), tr_y)

    hessian = torch.func.hessian(mean_train_loss)(theta)
    g_tr, g_te = per_example_grads(model, tr_x, tr_y), per_example_grads(model, te_x, te_y)
    expected = g_te @ torch.linalg.solve(hessian + DAMPING * torch.eye(len(theta)), g_tr.T)
    result = run_dattri("if_explicit", factory, ckpts, tr_x, tr_y, te_x, te_y, damping=DAMPING)
    assert result.scores.shape == (N_TEST, N_TRAIN)
    assert spearmanr(result.scores.ravel(), expected.numpy().ravel())[0] > 0.9
    # same sign and scale too: H of the mean loss, not divided by n_train
    np.testing.assert_allclose(
        result.scores, expected.numpy(), rtol=1e-3, atol=1e-4 * expected.abs().max().item()
    )


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_finite(problem, method):
    _, ckpts, tr_x, tr_y, te_x, te_y = problem
    # dattri's default LiSSA recursion_depth (5000) is too slow for a unit test
    extra = {"recursion_depth": 50} if method == "if_lissa" else None
    result = run_dattri(
        method,
        factory,
        ckpts,
        tr_x,
        tr_y,
        te_x,
        te_y,
        proj_dim=32,  # < n_train, so TRAK's unregularised kernel is invertible
        damping=DAMPING,
        lrs=[LR] * len(ckpts),
        method_kwargs=extra,
    )
    assert result.method == method
    assert result.scores.shape == (N_TEST, N_TRAIN) and result.scores.dtype == np.float32
    assert np.isfinite(result.scores).all() and np.abs(result.scores).max() > 0
    assert result.seconds > 0 and result.peak_rss_mb >= 0
    assert result.settings["method"] == method and not result.settings["sign_flip"]
    json.dumps(result.settings)
