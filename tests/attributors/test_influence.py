"""Influence functions against leave-one-out retraining (convex case) and against each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tda_explorer.attributors import make_attributor
from tda_explorer.errors import ConfigError, NotFittedError

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


def test_influence_settings_and_fit_errors(digits_case):
    with pytest.raises(ConfigError):
        make_attributor("influence", solver="newton")
    with pytest.raises(ConfigError):
        make_attributor("influence", damping=-1.0)
    with pytest.raises(NotFittedError):
        make_attributor("influence").score(digits_case.queries)
    with pytest.raises(ConfigError):
        make_attributor("influence", seeds=[7]).fit(digits_case.run, digits_case.train)
