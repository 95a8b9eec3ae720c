"""The regression task: a ridge regression (an nn.Linear) imported with task="regression" and its L2
declared; exact influence matches leave-one-out retraining, TRAK (no projection, lambda = N wd) equals
exact influence, and grad_dot / TracIn / EK-FAC run in the same sign convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from tda_explorer import import_run
from tda_explorer.attributors import make_attributor
from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.store import Workspace

N, D, WD = 80, 5, 0.05


def linear() -> nn.Module:
    return nn.Sequential(nn.Linear(D, 1))


def examples(x, y, prefix) -> ExampleSet:
    return ExampleSet(tuple(f"{prefix}{i}" for i in range(len(y))), x, y, (), "tabular", prefix)


def ridge(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """argmin (1/N) sum_i w_i (f_i - y_i)^2 / 2 + WD/2 ||theta||^2 (bias included), N = len(y)."""
    w = torch.ones(len(y), dtype=x.dtype) if w is None else w
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    a = xa.T @ (w[:, None] * xa) / len(y) + WD * torch.eye(D + 1, dtype=x.dtype)
    theta = torch.linalg.solve(a, xa.T @ (w * y) / len(y))
    return theta[:D], theta[D:]


@pytest.fixture(autouse=True)
def float64(monkeypatch):
    monkeypatch.setenv("TDA_DTYPE", "float64")
    monkeypatch.setenv("TDA_DEVICE", "cpu")


@pytest.fixture(scope="module")
def case():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N + 12, D, generator=gen, dtype=torch.float64)
    y = x @ torch.linspace(-1, 1, D, dtype=torch.float64) + 0.5 * torch.randn(
        N + 12, generator=gen, dtype=torch.float64
    )
    y[3] += 4.0  # an outlier with visible influence
    x, y = x.float(), y.float()  # the package's data are float32; references below run in float64
    train, test = examples(x[:N], y[:N], "t"), examples(x[N:], y[N:], "q")
    splits = DatasetSplits(train, test, test, {"name": "ridge-test"})
    weight, bias = ridge(train.inputs.double(), train.labels.double())
    model = linear()
    model.load_state_dict({"0.weight": weight[None], "0.bias": bias})
    return splits, model


def _run(tmp_path, case, **kw):
    splits, model = case
    return import_run(
        linear,
        [model.state_dict()],
        splits,
        task="regression",
        weight_decay=WD,
        workspace=Workspace(tmp_path),
        **kw,
    )


def test_exact_influence_matches_leave_one_out(tmp_path, case):
    splits, model = case
    run = _run(tmp_path, case)
    scores = (
        make_attributor("influence", solver="exact", params="all", damping=0.0)
        .fit(run, splits.train)
        .score(splits.test)
    )
    x, y = splits.train.inputs.double(), splits.train.labels.double()
    xq, yq = splits.test.inputs.double(), splits.test.labels.double()

    def query_loss(weight, bias):
        return 0.5 * (xq @ weight + bias - yq).square()

    base = query_loss(*ridge(x, y))
    loo = torch.stack(
        [query_loss(*ridge(x[torch.arange(N) != i], y[torch.arange(N) != i])) - base for i in range(N)], 1
    )  # [n_query, N]: the query loss increase when i is removed
    rhos = [spearmanr(scores[q].numpy(), loo[q].numpy())[0] for q in range(len(yq))]
    assert np.mean(rhos) >= 0.9 and min(rhos) > 0.6, rhos
    # the first-order prediction is also close in value (removing 1 of 80 examples)
    torch.testing.assert_close(scores, loo.to(scores), rtol=0.15, atol=0.05 * float(loo.abs().max()))


def test_trak_without_projection_equals_exact_influence(tmp_path, case):
    splits, _ = case
    run = _run(tmp_path, case)
    inf = make_attributor("influence", solver="exact", params="all", damping=0.0).fit(run, splits.train)
    trak = make_attributor("trak", proj_dim=None, damping=N * WD).fit(run, splits.train)
    torch.testing.assert_close(trak.score(splits.test), inf.score(splits.test), rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(trak.self_influence(), inf.self_influence(), rtol=1e-6, atol=1e-10)


def test_gradient_methods_run_for_regression(tmp_path, case):
    splits, model = case
    run = _run(tmp_path, case)
    dot = make_attributor("grad_dot", params="all").fit(run, splits.train).score(splits.test)
    # grad_dot = <(f_q - y_q) x_q, (f_i - y_i) x_i> on [x, 1]
    ref = run.model(0).double()
    xq, xt = splits.test.inputs.double(), splits.train.inputs.double()
    with torch.no_grad():
        rq = ref(xq)[:, 0] - splits.test.labels.double()
        rt = ref(xt)[:, 0] - splits.train.labels.double()
    aug = lambda x: torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # noqa: E731
    want = (rq[:, None] * aug(xq)) @ (rt[:, None] * aug(xt)).T
    torch.testing.assert_close(dot, want.to(dot))
    ekfac = (
        make_attributor("influence", solver="ekfac", params="all").fit(run, splits.train).score(splits.test)
    )
    exact = (
        make_attributor("influence", solver="exact", params="all").fit(run, splits.train).score(splits.test)
    )
    assert ekfac.shape == exact.shape and torch.isfinite(ekfac).all()
    assert spearmanr(ekfac.flatten(), exact.flatten())[0] > 0.8
    with_lr = import_run(
        linear,
        [[{"state": model.state_dict(), "step": 10, "lr": 0.1}]],
        splits,
        task="regression",
        workspace=Workspace(tmp_path),
    )
    tracin = make_attributor("tracin", params="all").fit(with_lr, splits.train).score(splits.test)
    torch.testing.assert_close(tracin, 0.1 * want.to(tracin))


def test_task_must_match_the_targets(tmp_path, case):
    splits, model = case
    with pytest.raises(ConfigError, match="does not match the data"):
        import_run(linear, [model.state_dict()], splits, workspace=Workspace(tmp_path))
    with pytest.raises(ConfigError, match="not one of"):
        import_run(linear, [model.state_dict()], splits, task="ranking", workspace=Workspace(tmp_path))
