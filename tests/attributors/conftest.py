"""Fixtures: a strongly regularised binary logreg on sklearn digits (3 vs 8) trained to convergence in
float64 with full-batch L-BFGS, plus a tiny multi-checkpoint MLP run, both wrapped as TrainedRuns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tda_explorer.data.example_set import ExampleSet
from tda_explorer.models import LogRegConfig, MLPConfig, build_model
from tda_explorer.training import Checkpoint, TrainConfig, TrainedRun, train_model
from tests.fixtures import float64, single_thread  # noqa: F401 (autouse fixtures for this folder)

WD = 0.1
N_TRAIN = 300


def as_examples(x: torch.Tensor, y: torch.Tensor, prefix: str, classes: tuple[str, ...]) -> ExampleSet:
    return ExampleSet(
        tuple(f"{prefix}{i}" for i in range(len(y))), x.float(), y.long(), classes, "tabular", prefix
    )


def make_run(model_config, train_config, states: dict[int, list[dict]], input_shape, n_classes) -> TrainedRun:
    ckpts = {
        seed: [Checkpoint(i + 1, float(i + 1), 0.1 / (i + 1), 0.1, 1, st) for i, st in enumerate(sts)]
        for seed, sts in states.items()
    }
    return TrainedRun(
        "test", {}, model_config, train_config, tuple(states), input_shape, n_classes, ckpts, {}
    )


def fit_logreg(model, x, y, weights, wd=WD, iters=3):
    """Minimise `(1/N) sum_i w_i loss_i + wd/2 ||theta||^2` (N = len(y)) in place with L-BFGS."""
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-15,
        history_size=50, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = (F.cross_entropy(model(x), y, reduction="none") * weights).sum() / len(y)
        loss = loss + wd / 2 * sum(p.square().sum() for p in model.parameters())
        loss.backward()
        return loss

    for _ in range(iters):
        opt.step(closure)
    return model


@dataclass
class DigitsCase:
    run: TrainedRun
    train: ExampleSet
    queries: ExampleSet
    model: torch.nn.Module  # float64, converged

    def loo_model(self, removed: int) -> torch.nn.Module:
        """The float64 model retrained without train example `removed` (warm start from the converged one)."""
        model = build_model(LogRegConfig(), (64,), 2).double()
        model.load_state_dict(self.model.state_dict())
        w = torch.ones(N_TRAIN, dtype=torch.float64)
        w[removed] = 0.0
        return fit_logreg(model, self.train.inputs.double(), self.train.labels, w, iters=2)

    def loo_query_losses(self, removed: int) -> torch.Tensor:
        """Query losses `[n_query]` after retraining without train example `removed`."""
        return self.query_losses(self.loo_model(removed))

    def query_losses(self, model) -> torch.Tensor:
        with torch.no_grad():
            return F.cross_entropy(model(self.queries.inputs.double()), self.queries.labels, reduction="none")


@pytest.fixture(scope="session")
def digits_case() -> DigitsCase:
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.isin(d.target, (3, 8))
    x = torch.tensor(d.data[keep] / 16.0)
    y = torch.tensor((d.target[keep] == 8).astype(np.int64))
    train = as_examples(x[:N_TRAIN], y[:N_TRAIN], "tr", ("3", "8"))
    queries = as_examples(x[N_TRAIN : N_TRAIN + 30], y[N_TRAIN : N_TRAIN + 30], "q", ("3", "8"))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(LogRegConfig(), (64,), 2).double()
    fit_logreg(model, x[:N_TRAIN], y[:N_TRAIN], torch.ones(N_TRAIN, dtype=torch.float64), iters=4)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=WD, epochs=1, checkpoints=1)
    run = make_run(LogRegConfig(), cfg, {0: [state]}, (64,), 2)
    return DigitsCase(run, train, queries, model)


@pytest.fixture(scope="session")
def tiny_run() -> tuple[TrainedRun, ExampleSet, ExampleSet]:
    """Two seeds of a small MLP trained with train_model (3 checkpoints each) on 48 random examples."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 6, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    train, queries = (
        as_examples(x[:48], y[:48], "t", ("a", "b", "c")),
        as_examples(x[48:], y[48:], "q", ("a", "b", "c")),
    )
    mcfg = MLPConfig(hidden=(5,))
    tcfg = TrainConfig(optimizer="sgd", lr=0.2, weight_decay=1e-2, epochs=6, batch_size=16, checkpoints=3)
    states = {s: [c.state for c in train_model(mcfg, tcfg, train, s).checkpoints] for s in (0, 1)}
    return make_run(mcfg, tcfg, states, (6,), 3), train, queries
