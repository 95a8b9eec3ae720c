"""Influence functions against leave-one-out retraining (convex case) and against each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tda_explorer.attributors import make_attributor
from tda_explorer.errors import ConfigError, NotFittedError
from tests.fixtures import assert_same_attribution

N_QUERIES = 6


def loo_table(case, scores):
    """Removed examples (top proponent + top opponent per query, plus random ones) and the true
    query-loss changes `[N_QUERIES, n_removed]` from leave-one-out retraining."""
    rng = np.random.default_rng(0)
    chosen = []
    for q in range(N_QUERIES):
        chosen += [int(scores[q].argmax()), int(scores[q].argmin())]
    chosen += [int(i) for i in rng.choice(len(case.train), 6, replace=False)]
    removed = list(dict.fromkeys(chosen))
    base = case.query_losses(case.model)[:N_QUERIES]
    delta = torch.stack([case.loo_query_losses(t)[:N_QUERIES] - base for t in removed], dim=1)
    return removed, delta


@pytest.fixture(scope="module")
def exact_scores(digits_case):
    import os

    os.environ["TDA_DTYPE"] = "float64"
    attr = make_attributor("influence", solver="exact", damping=0.0).fit(digits_case.run, digits_case.train)
    return attr.score(digits_case.queries).double()


def test_exact_influence_predicts_leave_one_out(digits_case, exact_scores):
    removed, delta = loo_table(digits_case, exact_scores)
    pred = exact_scores[:N_QUERIES, removed]
    rho = spearmanr(pred.flatten(), delta.flatten())[0]
    assert rho >= 0.9, rho
    # scale: the 1/N is included, so predicted and true loss changes agree in size
    ratio = float((pred * delta).sum() / (pred * pred).sum())
    assert 0.8 < ratio < 1.25, ratio
    # sign: removing the top proponent of a query raises its loss; removing the top opponent lowers it
    for q in range(N_QUERIES):
        top, bottom = (
            removed.index(int(exact_scores[q].argmax())),
            removed.index(int(exact_scores[q].argmin())),
        )
        assert delta[q, top] > 0 and exact_scores[q].max() > 0
        assert delta[q, bottom] < 0 and exact_scores[q].min() < 0


@pytest.mark.parametrize("solver", ["ekfac", "kfac"])
def test_kronecker_influence_matches_exact(digits_case, exact_scores, solver):
    attr = make_attributor("influence", solver=solver, damping=0.0).fit(digits_case.run, digits_case.train)
    scores = attr.score(digits_case.queries).double()
    rho = spearmanr(scores.flatten(), exact_scores.flatten())[0]
    assert rho >= 0.95, rho
    # default damping (0.1 x mean eigenvalue per layer) stays close too
    default = make_attributor("influence", solver=solver).fit(digits_case.run, digits_case.train)
    assert spearmanr(default.score(digits_case.queries).flatten(), exact_scores.flatten())[0] >= 0.95


@pytest.mark.parametrize("solver", ["cg", "lissa"])
def test_iterative_influence_matches_exact(digits_case, solver):
    queries = digits_case.queries.subset(range(3))
    exact = make_attributor("influence", solver="exact", damping=0.5).fit(digits_case.run, digits_case.train)
    attr = make_attributor("influence", solver=solver, damping=0.5, tol=1e-10)
    scores = attr.fit(digits_case.run, digits_case.train).score(queries).double()
    torch.testing.assert_close(scores, exact.score(queries).double(), rtol=1e-5, atol=1e-8)
    info = attr.solve_info_[0]["solves"][-1]
    assert info["converged"] and info["residual"] < 1e-6


def test_ekfac_preconditioned_cg_matches_exact_in_fewer_iterations(digits_case):
    queries = digits_case.queries.subset(range(3))
    exact = make_attributor("influence", solver="exact", damping=0.05).fit(digits_case.run, digits_case.train)
    iterations = {}
    for pre in (None, "ekfac"):
        attr = make_attributor("influence", solver="cg", damping=0.05, tol=1e-10, preconditioner=pre)
        scores = attr.fit(digits_case.run, digits_case.train).score(queries).double()
        torch.testing.assert_close(scores, exact.score(queries).double(), rtol=1e-5, atol=1e-8)
        info = attr.solve_info_[0]["solves"][-1]
        assert info["converged"]
        iterations[pre] = info["iterations"]
    assert iterations["ekfac"] < iterations[None], iterations
    with pytest.raises(ConfigError, match="preconditioner"):
        make_attributor("influence", solver="lissa", preconditioner="ekfac")
    with pytest.raises(ConfigError, match="preconditioner"):
        make_attributor("influence", solver="cg", preconditioner="jacobi")


def test_influence_settings_and_fit_errors(digits_case):
    with pytest.raises(ConfigError):
        make_attributor("influence", solver="newton")
    with pytest.raises(ConfigError):
        make_attributor("influence", damping=-1.0)
    with pytest.raises(NotFittedError):
        make_attributor("influence").score(digits_case.queries)
    with pytest.raises(ConfigError):
        make_attributor("influence", seeds=[7]).fit(digits_case.run, digits_case.train)


@pytest.mark.parametrize("solver", ["ekfac", "exact", "cg"])
def test_ghost_train_gradients_give_the_same_influence(tiny_run, monkeypatch, solver):
    """Linear-only models keep ghost factors of the train gradients; scores match materialised ones."""
    import tda_explorer.attributors.base as base
    from tda_explorer.backend.ghost import GhostFactors

    run, train, queries = tiny_run
    settings = {"solver": solver, "damping": 0.5, "seeds": "all"}
    ghost = make_attributor("influence", **settings).fit(run, train)
    assert isinstance(ghost.members_[0].train_grads, GhostFactors)
    monkeypatch.setattr(base, "USE_GHOST", False)
    dense = make_attributor("influence", **settings).fit(run, train)
    assert isinstance(dense.members_[0].train_grads, torch.Tensor)
    groups = torch.rand(3, len(train)) > 0.5
    assert_same_attribution(ghost, dense, queries, groups, rtol=1e-4, atol=1e-6)


def test_scores_do_not_depend_on_the_query_chunk(tiny_run, monkeypatch):
    """score / score_groups hold QUERY_BYTES of query vectors per seed at a time; the result is the same."""
    import tda_explorer.attributors.influence as influence

    run, train, queries = tiny_run
    attr = make_attributor("influence", solver="ekfac", seeds="all").fit(run, train)
    groups = torch.rand(3, len(train), generator=torch.Generator().manual_seed(0)) > 0.5
    whole, whole_groups = attr.score(queries), attr.score_groups(queries, groups)
    p = sum(t.numel() for t in run.model().parameters())
    monkeypatch.setattr(influence, "QUERY_BYTES", 5 * p * 8)  # float64 here: 12 queries -> chunks of 5, 5, 2
    sizes, inner = [], attr._query_vector
    monkeypatch.setattr(attr, "_query_vector", lambda m, q: sizes.append(len(q)) or inner(m, q))
    torch.testing.assert_close(attr.score(queries), whole)
    assert sizes == [5, 5, 2] * 2  # per seed
    torch.testing.assert_close(attr.score_groups(queries, groups), whole_groups)


def test_checkpoints_all_averages_one_member_per_checkpoint(tiny_run):
    """checkpoints="all": one member per (seed, checkpoint), scores = mean of the per-checkpoint scores."""
    from .conftest import make_run

    run, train, queries = tiny_run
    kw = {"solver": "ekfac", "damping": 0.05}
    both = make_attributor("influence", checkpoints="all", seeds="all", **kw).fit(run, train)
    n_ckpt = len(run.checkpoints[0])
    assert len(both.members_) == 2 * n_ckpt
    parts = []
    for seed in (0, 1):
        for c in range(n_ckpt):
            single = make_run(
                run.model_config, run.train_config, {seed: [run.checkpoints[seed][c].state]}, (6,), 3
            )
            parts.append(make_attributor("influence", **kw).fit(single, train).score(queries))
    torch.testing.assert_close(both.score(queries), torch.stack(parts).mean(0), rtol=1e-4, atol=1e-7)
    with pytest.raises(ConfigError, match="checkpoints"):
        make_attributor("influence", checkpoints="last")


def test_default_damping_factor_depends_on_the_solver(digits_case):
    """Unset ("auto", which falls back to the solver's default without a validation split, as here), the
    relative damping is 1 x the mean eigenvalue for the true-Hessian solvers and 0.1 x each layer's mean
    eigenvalue for the Kronecker ones (`DEFAULT_DAMPING_FACTOR`)."""

    def damping(solver, **kw):
        attr = make_attributor("influence", solver=solver, **kw).fit(digits_case.run, digits_case.train)
        return attr.settings["damping_factor"], attr.solve_info_[0]["damping"]

    factor, exact = damping("exact")
    assert factor == "auto"
    assert exact == pytest.approx(damping("exact", damping_factor=1.0)[1], rel=1e-12)
    assert exact == pytest.approx(10 * damping("exact", damping_factor=0.1)[1], rel=1e-12)
    assert damping("ekfac")[1] == damping("ekfac", damping_factor=0.1)[1]
    assert damping("ekfac")[1] != damping("ekfac", damping_factor=1.0)[1]
    with pytest.raises(ConfigError, match="damping_factor"):
        make_attributor("influence", damping_factor=-0.1)
