"""kronfluence peer runner: our sign (against exact damped influence on softmax regression), shape, damping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from benchmarks.peers.kronfluence_runner import run_kronfluence
from tda_explorer.models import LogRegConfig, build_model
from tests.fixtures import digits_gd_problem

pytest.importorskip("kronfluence")  # the bench extra (requirements-bench-nodeps.txt)
pytestmark = pytest.mark.slow  # ~1 min on a loaded machine: kronfluence writes and reads its factors

N_TRAIN, N_TEST, DAMPING = 80, 8, 1e-2


def factory() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(LogRegConfig(), (1, 8, 8), 10)


@pytest.fixture(scope="module")
def problem():
    model, _, tr_x, tr_y, te_x, te_y = digits_gd_problem(factory, N_TRAIN, 200, N_TEST, steps=200, lr=0.5)
    return model.state_dict(), tr_x, tr_y, te_x, te_y


def exact_influence(state, tr_x, tr_y, te_x, te_y) -> np.ndarray:
    """`g_test^T (H + DAMPING I)^{-1} g_train` with H the Hessian of the mean loss (float64)."""
    model = factory().double()
    model.load_state_dict({k: v.double() for k, v in state.items()})
    params = {k: v.detach() for k, v in model.named_parameters()}
    names, shapes = list(params), [v.shape for v in params.values()]
    flat = torch.cat([v.reshape(-1) for v in params.values()])

    def unflat(v):
        out, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            out[n] = v[i : i + s.numel()].reshape(s)
            i += s.numel()
        return out

    def loss(v, x, y):
        return F.cross_entropy(torch.func.functional_call(model, unflat(v), (x.double(),)), y)

    hess = torch.func.hessian(lambda v: loss(v, tr_x, tr_y))(flat)
    per = torch.func.vmap(torch.func.grad(lambda v, x, y: loss(v, x[None], y[None])), (None, 0, 0))
    g_tr, g_te = per(flat, tr_x, tr_y), per(flat, te_x, te_y)
    return (
        g_te @ torch.linalg.solve(hess + DAMPING * torch.eye(len(flat), dtype=hess.dtype), g_tr.T)
    ).numpy()


def test_scores_follow_our_sign_and_rank_like_exact_influence(problem):
    state, tr_x, tr_y, te_x, te_y = problem
    res = run_kronfluence(
        factory, state, tr_x, tr_y, te_x, te_y, damping=DAMPING, factor_batch_size=32, train_batch_size=40
    )
    assert res.scores.shape == (N_TEST, N_TRAIN) and np.isfinite(res.scores).all()
    assert res.settings["damping_factor"] == DAMPING and res.settings["factor_seconds"] > 0
    ref = exact_influence(state, tr_x, tr_y, te_x, te_y)
    rho = np.mean([spearmanr(res.scores[i], ref[i])[0] for i in range(N_TEST)])
    # a flipped sign gives about -0.6 (EK-FAC of a 1-sample Fisher vs the exact H: 0.58)
    assert rho > 0.4, rho
    # the heuristic damping (0.1 x mean eigenvalue) is recorded as kronfluence's None
    heur = run_kronfluence(factory, state, tr_x, tr_y, te_x[:2], te_y[:2], damping="heuristic")
    assert heur.settings["damping_factor"] is None and heur.scores.shape == (2, N_TRAIN)


@pytest.mark.parametrize("damping", ["kronfluence", -1.0])
def test_bad_damping_is_refused(problem, damping):
    state, tr_x, tr_y, te_x, te_y = problem
    with pytest.raises(ValueError, match="damping"):
        run_kronfluence(factory, state, tr_x, tr_y, te_x, te_y, damping=damping)
