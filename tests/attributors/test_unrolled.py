"""Unrolled: the replay is the run bit for bit; dm/dw against central finite differences of real weighted
retraining (float64: SGD + momentum + cosine, Adam + warm-up + linear, dropout, two stages, and two SGD
stages on the taped closed-form chain path); chunking does not change results; on a converged convex
model it agrees with exact influence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.unrolled import Unrolled
from tda_explorer.errors import ConfigError, NotFittedError
from tda_explorer.models import LogRegConfig, MLPConfig
from tda_explorer.training import (
    Stage,
    StagedConfig,
    TrainConfig,
    TrainedRun,
    train_model,
    train_staged_model,
)
from tda_explorer.training.weighted import train_weighted

from .conftest import as_examples

EPS = 1e-6  # small enough that no ReLU kink is crossed; float64 noise stays ~1e-8 relative


def blobs(n: int, d: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 0.7).long()
    return x, y


@pytest.fixture(scope="module")
def data():
    x, y = blobs(50)
    return as_examples(x[:40], y[:40], "t", ("a", "b", "c")), as_examples(
        x[40:], y[40:], "q", ("a", "b", "c")
    )


def as_run(mcfg, recipe, train, seeds=(0,)) -> TrainedRun:
    """A TrainedRun made by the package's trainer (staged when `recipe` is a StagedConfig)."""
    staged = isinstance(recipe, StagedConfig)
    fn = train_staged_model if staged else train_model
    ckpts = {s: fn(mcfg, recipe, train, s).checkpoints for s in seeds}
    tcfg = recipe.last if staged else recipe
    shape = train.input_shape
    return TrainedRun(
        "t", {}, mcfg, tcfg, tuple(seeds), shape, train.n_classes, ckpts, {}, recipe if staged else None
    )


def query_losses(mcfg, recipe, train, queries, weights, seed=0) -> torch.Tensor:
    _, logits = train_weighted(mcfg, recipe, train, seed, weights, torch.float64, {"q": queries})
    return F.cross_entropy(logits["q"].double(), queries.labels, reduction="none")


def fd_weight_gradients(mcfg, recipe, train, queries, examples) -> torch.Tensor:
    """Central differences `[n_query, len(examples)]` of the query losses in w_i (real float64 retraining)."""
    cols = []
    for i in examples:
        w = torch.ones(len(train), dtype=torch.float64)
        w[i] = 1 + EPS
        up = query_losses(mcfg, recipe, train, queries, w)
        w[i] = 1 - EPS
        down = query_losses(mcfg, recipe, train, queries, w)
        cols.append((up - down) / (2 * EPS))
    return torch.stack(cols, 1)


TWO_STAGE_MASK = np.arange(40) < 28
CASES = {
    "sgd_momentum_cosine": (
        MLPConfig(hidden=(8,)),
        TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-2, epochs=40, batch_size=8),
    ),
    "adam_warmup_linear": (
        MLPConfig(hidden=(8,)),
        TrainConfig(
            optimizer="adam",
            lr=1e-2,
            weight_decay=1e-3,
            epochs=40,
            batch_size=8,
            schedule="linear",
            warmup_steps=20,
        ),
    ),
    "dropout_plain_sgd": (
        MLPConfig(hidden=(10,), dropout=0.3),
        TrainConfig(optimizer="sgd", lr=0.2, momentum=0.0, weight_decay=1e-3, epochs=40, batch_size=8),
    ),
    "two_stage": (
        MLPConfig(hidden=(8,), dropout=0.2),
        StagedConfig(
            (
                Stage(TrainConfig(lr=0.1, epochs=25, batch_size=8), TWO_STAGE_MASK, "pre"),
                Stage(
                    TrainConfig(optimizer="adam", lr=5e-3, epochs=25, batch_size=6, warmup_steps=5),
                    ~TWO_STAGE_MASK | (np.arange(40) % 5 == 0),
                    "fine",
                ),
            )
        ),
    ),
    # the shape of benchmarks/source_dtda.py's two-stage scenario: SGD + momentum in both stages (cosine,
    # then constant), disjoint halves, no dropout -- the closed-form chain step with its tape
    "two_stage_chain": (
        MLPConfig(hidden=(8,)),
        StagedConfig(
            (
                Stage(
                    TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-2, epochs=20, batch_size=8),
                    TWO_STAGE_MASK,
                    "pre",
                ),
                Stage(
                    TrainConfig(
                        lr=0.02, momentum=0.9, weight_decay=1e-2, epochs=10, batch_size=8, schedule="constant"
                    ),
                    ~TWO_STAGE_MASK,
                    "fine",
                ),
            )
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_weight_gradients_match_finite_differences_of_retraining(case, data):
    train, queries = data
    mcfg, recipe = CASES[case]
    run = as_run(mcfg, recipe, train)
    attr = Unrolled(every=7, query_chunk=4).fit(run, train)
    (member,) = attr.members_
    if case == "two_stage_chain":  # both stages taped: the reverse pass replays nothing
        traj = member.trajectory
        assert traj.chain is not None and sorted(traj.tapes) == list(range(traj.total_steps))
        assert {s.stage for s in traj.steps} == {0, 1}
    examples = [0, 3, 17, 29, 33, 39]
    fd = fd_weight_gradients(mcfg, recipe, train, queries, examples)
    ad = attr.weight_gradients(member, queries)[:, examples]
    rel = float((ad - fd).norm() / fd.norm())
    print(f"{case}: relative error {rel:.2e}, |fd| {float(fd.norm()):.3e}")
    assert rel <= 1e-4
    # the house sign: score = -dm/dw, the predicted increase of the loss when the example is removed
    torch.testing.assert_close(attr.score(queries)[:, examples].double(), -ad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", ["sgd_momentum_cosine", "two_stage", "two_stage_chain"])
def test_replay_is_the_run_bit_for_bit_in_float32(case, data, monkeypatch):
    monkeypatch.setenv("TDA_DTYPE", "float32")
    train, _ = data
    mcfg, recipe = CASES[case]
    run = as_run(mcfg, recipe, train)
    attr = Unrolled().fit(run, train)
    assert attr.replay_gaps_ == {0: 0.0}
    (m,) = attr.members_
    final = run.checkpoints[0][-1].state
    assert torch.equal(m.theta, torch.cat([final[n].reshape(-1) for n in m.trajectory.flat.names]))


def test_segment_replay_reproduces_recorded_steps(data):
    train, _ = data
    mcfg, recipe = CASES["two_stage"]
    attr = Unrolled(every=5).fit(as_run(mcfg, recipe, train), train)
    traj = attr.members_[0].trajectory
    assert {s.stage for s in traj.segments} == {0, 1}
    for seg in traj.segments:
        rep = traj.replay(seg)
        assert torch.equal(rep.thetas[0], traj.snapshots[seg.start][0])
        nxt = seg.stop if seg.stop < len(traj.steps) else None
        if nxt in traj.snapshots and traj.steps[nxt].stage == seg.stage:
            after = traj.replay(type(seg)(seg.stage, nxt, nxt + 1)).thetas[0]
            assert torch.equal(after, traj.snapshots[nxt][0])


def test_chunking_seeds_and_groups(data):
    train, queries = data
    mcfg, recipe = CASES["sgd_momentum_cosine"]
    run = as_run(mcfg, recipe, train, seeds=(0, 1))
    one = Unrolled(query_chunk=1, every=3).fit(run, train).score(queries)
    many = Unrolled(query_chunk=10).fit(run, train).score(queries)
    torch.testing.assert_close(one, many, rtol=1e-6, atol=1e-9)
    both = Unrolled(seeds="all").fit(run, train)
    per_seed = [-both.weight_gradients(m, queries) for m in both.members_]
    torch.testing.assert_close(
        both.score(queries).double(), (per_seed[0] + per_seed[1]) / 2, rtol=1e-5, atol=1e-8
    )
    groups = torch.zeros(3, len(train), dtype=torch.bool)
    groups[0, :5], groups[1, 10:30], groups[2, ::3] = True, True, True
    torch.testing.assert_close(
        both.score_groups(queries, groups), both.score(queries) @ groups.float().T, rtol=1e-5, atol=1e-6
    )


def test_self_influence_is_the_diagonal_of_train_as_queries(data):
    train, _ = data
    mcfg, recipe = CASES["dropout_plain_sgd"]
    attr = Unrolled(query_chunk=16).fit(as_run(mcfg, recipe, train), train)
    full = attr.score(train)
    torch.testing.assert_close(attr.self_influence(), full.diagonal(), rtol=1e-5, atol=1e-8)


def test_settings_and_errors(data):
    with pytest.raises(ConfigError):
        make_attributor("unrolled", every=0)
    with pytest.raises(ConfigError):
        make_attributor("unrolled", query_chunk=1.5)
    with pytest.raises(NotFittedError):
        Unrolled().score(data[1])


def test_converged_convex_model_agrees_with_exact_influence():
    """Logistic regression, SGD to convergence (cosine to 0): unrolled ~ exact influence with the run's wd."""
    x, y = blobs(140, d=5, seed=3)
    y = (y > 0).long()
    train, queries = (
        as_examples(x[:120], y[:120], "t", ("a", "b")),
        as_examples(x[120:], y[120:], "q", ("a", "b")),
    )
    tcfg = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-2, epochs=150, batch_size=40)
    run = as_run(LogRegConfig(), tcfg, train)
    unrolled = Unrolled().fit(run, train).score(queries).double()
    exact = make_attributor("influence", solver="exact", damping=0.0).fit(run, train).score(queries).double()
    rho = spearmanr(unrolled.flatten().numpy(), exact.flatten().numpy()).statistic
    scale = float((unrolled * exact).sum() / exact.square().sum())
    print(f"convex: Spearman {rho:.4f}, least-squares scale unrolled/exact {scale:.3f}")
    assert rho > 0.95 and 0.8 < scale < 1.2


def test_dtda_unrolled_base_matches_fixed_seed_retraining(data):
    """d-TDA's per-seed deltas with the unrolled base: -dm/dw for margin (finite differences), and mean
    shifts over 3 seeds vs real fixed-seed retraining without the example (w_z = 0), Pearson over pairs."""
    train, queries = data
    mcfg = MLPConfig(hidden=(8,))
    tcfg = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-2, epochs=15, batch_size=8)
    seeds = (0, 1, 2)
    run = as_run(mcfg, tcfg, train, seeds)
    dtda = make_attributor("dtda", base="unrolled", measurement="margin").fit(run, train)
    result = dtda.distribution(queries)
    assert result.deltas.shape == (3, len(queries), len(train))

    def margins(seed, weights):
        _, logits = train_weighted(mcfg, tcfg, train, seed, weights, torch.float64, {"q": queries})
        z = logits["q"]
        others = z.masked_fill(F.one_hot(queries.labels, 3).bool(), float("-inf"))
        return (z.gather(1, queries.labels[:, None]).squeeze(1) - torch.logsumexp(others, 1)).numpy()

    z = 5
    w = torch.ones(len(train), dtype=torch.float64)
    w[z] = 1 + EPS
    up = margins(1, w)
    w[z] = 1 - EPS
    fd = (up - margins(1, w)) / (2 * EPS)
    np.testing.assert_allclose(result.deltas[1, :, z], -fd, rtol=1e-4, atol=1e-7)  # delta = change on removal
    # removing the whole example (w_z = 0), same seeds: predicted vs true mean shift over pairs
    pred, true = [], []
    for z in (1, 8, 15, 22, 30, 37):
        w = torch.ones(len(train), dtype=torch.float64)
        w[z] = 0.0
        shift = np.mean([margins(s, w) - margins(s, None) for s in seeds], axis=0)
        pred += list(result.mean_shift()[:, z])
        true += list(shift)
    r = float(np.corrcoef(pred, true)[0, 1])
    print(
        f"d-TDA unrolled: Pearson predicted vs fixed-seed retrained mean shift {r:.4f} over {len(pred)} pairs"
    )
    assert r > 0.95
