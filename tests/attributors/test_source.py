"""Source: the F / S functions, segment planning, the L = 1 limits against EK-FAC influence, a dense
reference of the unrolled formula, averaged EK-FAC, and multi-stage runs (no gradient where not trained)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.source import plan_segments, segment_decay, segment_response
from tda_explorer.backend.curvature import KroneckerCurvature, fit_averaged
from tda_explorer.backend.grads import ParamSubset, example_grads
from tda_explorer.backend.layers import find_layers, flat_to_layer
from tda_explorer.errors import ConfigError, NotFittedError
from tda_explorer.models import MLPConfig
from tda_explorer.training import Checkpoint, Stage, StagedConfig, TrainConfig, TrainedRun, train_staged_model

from .conftest import as_examples

CPU = torch.device("cpu")


def with_steps(run: TrainedRun, steps: int, lr: float = 0.1) -> TrainedRun:
    """The run with every checkpoint's segment set to `steps` steps at learning rate `lr`."""
    ckpts = {
        s: [dataclasses.replace(c, segment_steps=steps, segment_mean_lr=lr) for c in cs]
        for s, cs in run.checkpoints.items()
    }
    return dataclasses.replace(run, checkpoints=ckpts)


# ------------------------------------------------------------------------------------ F and S
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_response_and_decay_are_stable_with_correct_limits(dtype):
    s = torch.tensor([0.0, 1e-300, 1e-30, 1e-8, 1e-3, 1.0, 1e3, 1e30], dtype=torch.float64).to(dtype)
    for eta_k in (1e-8, 1.0, 37.0, 1e12, 1e300 if dtype == torch.float64 else 1e30):
        f, d = segment_response(s, eta_k), segment_decay(s, eta_k)
        assert torch.isfinite(f).all() and torch.isfinite(d).all()
        assert ((d >= 0) & (d <= 1)).all() and (f >= 0).all()
        assert f[0] == pytest.approx(eta_k)  # limit at s = 0
        big = eta_k * s.double() > 50  # converged directions: F = 1/s
        torch.testing.assert_close(f[big].double(), 1 / s[big].double(), rtol=1e-6, atol=0)
        small = eta_k * s.double() < 1e-6  # barely moved: F = eta K (1 - x/2)
        torch.testing.assert_close(
            f[small].double(), torch.full_like(f[small].double(), eta_k), rtol=1e-6, atol=0
        )
    # against the naive formula where it is accurate (float64, moderate x)
    x = torch.linspace(1e-3, 40, 200, dtype=torch.float64)
    torch.testing.assert_close(segment_response(x, 2.0), (1 - torch.exp(-2.0 * x)) / x, rtol=1e-12, atol=0)


def test_response_sits_between_one_and_1_3_times_damped_inverse():
    """The precise form of "L = 1 is IF with damping 1/(eta K)": F(s) / (1 / (s + 1/(eta K))) in [1, 1.3)."""
    s = torch.logspace(-8, 8, 2000, dtype=torch.float64)
    for eta_k in (0.01, 1.0, 100.0):
        ratio = segment_response(s, eta_k) * (s + 1 / eta_k)
        assert ratio.min() >= 1 - 1e-9 and ratio.max() < 1.3


def test_plan_segments():
    assert plan_segments([0] * 6, 3) == [[0, 1], [2, 3], [4, 5]]
    assert plan_segments([0] * 5, 3) == [[0, 1], [2, 3], [4]]
    assert plan_segments([0] * 3, 10) == [[0], [1], [2]]
    assert plan_segments([0] * 4, 1) == [[0, 1, 2, 3]]
    # stage boundaries are segment boundaries; every stage gets a segment even if L is smaller
    assert plan_segments([0, 0, 0, 1, 1, 1], 3) == [[0, 1], [2], [3, 4, 5]]
    assert plan_segments([0, 0, 1, 1, 1, 1], 1) == [[0, 1], [2, 3, 4, 5]]
    assert plan_segments([0, 1, 1, 1, 1, 1], 3) == [[0], [1, 2, 3], [4, 5]]
    with pytest.raises(ConfigError):
        plan_segments([1, 0], 2)
    with pytest.raises(ConfigError):
        plan_segments([0, 0], 0)


# ------------------------------------------------------------------------------ L = 1 limits
def test_one_segment_with_huge_eta_k_is_undamped_ekfac_influence(digits_case):
    run = with_steps(digits_case.run, steps=10**12)
    source = make_attributor("source", segments=1, damping=0.0).fit(run, digits_case.train)
    # the same Fisher as Source's (one sampled label per example; influence's default samples 4)
    influence = make_attributor("influence", solver="ekfac", damping=0.0, fisher_samples=1).fit(
        run, digits_case.train
    )
    torch.testing.assert_close(
        source.score(digits_case.queries), influence.score(digits_case.queries), rtol=1e-6, atol=1e-9
    )
    torch.testing.assert_close(source.self_influence(), influence.self_influence(), rtol=1e-6, atol=1e-9)


def test_one_segment_finite_eta_k_tracks_influence_damped_by_inverse_eta_k(digits_case):
    run = with_steps(digits_case.run, steps=3)  # eta = 0.1 / (1 - 0.9) = 1, eta K = 3
    source = make_attributor("source", segments=1, damping=0.0).fit(run, digits_case.train)
    eta_k = source.segments_[0][0]["eta_k"]
    assert eta_k == pytest.approx(3.0)
    damped = make_attributor("influence", solver="ekfac", damping=1 / eta_k).fit(run, digits_case.train)
    a, b = source.score(digits_case.queries).double(), damped.score(digits_case.queries).double()
    assert spearmanr(a.flatten(), b.flatten())[0] > 0.99
    # elementwise in the eigenbasis F(s) is between 1 and 1.3 times 1/(s + 1/(eta K)): so are the quadratics
    ratio = source.self_influence().double() / damped.self_influence().double()
    assert ratio.min() >= 1 - 1e-6 and ratio.max() <= 1.3


# -------------------------------------------------------------------- dense unrolled reference
def dense_curvature(curv: KroneckerCurvature, p: int, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues `[p]` (with wd + damping) and eigenvectors `[p, p]` of the dense EK-FAC matrix."""
    h = torch.zeros(p, p, dtype=torch.float64)
    for info in find_layers(model, ParamSubset.resolve(model)):
        f = curv.factors_[info.name]
        q = torch.kron(f.q_s, f.q_a)
        block = q @ torch.diag((f.eigenvalues + curv.weight_decay + f.damping).flatten()) @ q.T
        idx = flat_to_layer(torch.arange(p, dtype=torch.float64)[None], info).reshape(-1).long()
        h[idx[:, None], idx[None, :]] = block
    return torch.linalg.eigh(h)


def test_matches_dense_unrolled_formula(tiny_run):
    """Three segments, one checkpoint each: score = v^T sum_l S_3..S_{l+1} F_l g_l / N with dense matrices."""
    run, train, queries = tiny_run
    attr = make_attributor("source", segments=3, damping=1e-4, include_start=False).fit(run, train)
    segs = attr.segments_[0]
    assert [s["checkpoints"] for s in segs] == [s["averaged"] for s in segs] == [[0], [1], [2]]
    x, y = train.inputs.double(), train.labels
    total = None
    for seg in segs:
        model = run.model(0, seg["checkpoints"][0]).double()
        curv = KroneckerCurvature(
            model, damping=1e-4, weight_decay=seg["weight_decay"], dtype=torch.float64, device=CPU
        ).fit(x)
        p = ParamSubset.resolve(model).numel
        lam, q = dense_curvature(curv, p, model)
        decay = q @ torch.diag(torch.exp(-seg["eta_k"] * lam)) @ q.T
        resp = q @ torch.diag((1 - torch.exp(-seg["eta_k"] * lam)) / lam) @ q.T
        g = example_grads(model, x, y, dtype=torch.float64, device=CPU)
        step = g @ resp / len(train)  # rows: r(z)^T, accumulated forward in time
        total = step if total is None else total @ decay + step
    final = run.model(0).double()
    v = example_grads(final, queries.inputs.double(), queries.labels, dtype=torch.float64, device=CPU)
    torch.testing.assert_close(attr.score(queries).double(), v @ total.T, rtol=1e-5, atol=1e-8)
    # by default a segment also averages over the checkpoint it starts from (same steps and lr)
    default = make_attributor("source", segments=3, damping=1e-4).fit(run, train).segments_[0]
    assert [s["averaged"] for s in default] == [[0], [0, 1], [1, 2]]
    assert [s["steps"] for s in default] == [s["steps"] for s in segs]


def test_fit_averaged_is_one_basis_with_mean_corrected_eigenvalues(tiny_run):
    run, train, _ = tiny_run
    x = train.inputs.double()
    models = [run.model(0, i).double() for i in range(3)]
    kw = {"damping": 0.0, "seed": 2, "dtype": torch.float64, "device": CPU}
    single = fit_averaged([KroneckerCurvature(models[0], **kw)], x)
    alone = KroneckerCurvature(models[0], **kw).fit(x)
    for name, f in alone.factors_.items():
        torch.testing.assert_close(single.factors_[name].eigenvalues, f.eigenvalues)
    curvs = [KroneckerCurvature(m, **kw) for m in models]
    covs = [c._covariances(x) for c in curvs]
    avg = fit_averaged(curvs, x)
    for info in avg.layers:
        f = avg.factors_[info.name]
        mean_a = sum(c[info.name][0] for c in covs) / 3
        mean_s = sum(c[info.name][1] for c in covs) / 3
        for q, m in ((f.q_a, mean_a), (f.q_s, mean_s)):  # the shared basis diagonalises the mean factors
            off = q.T @ m @ q
            torch.testing.assert_close(off, torch.diag(off.diagonal()), rtol=0, atol=1e-10)
        want = 0
        for model in models:  # mean over models of E_i[(Q_S^T G_i Q_A)^2] with the sampled labels
            with torch.no_grad():
                probs = torch.softmax(model(x), -1)
            labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(2)).squeeze(1)
            g = flat_to_layer(example_grads(model, x, labels, dtype=torch.float64, device=CPU), info)
            want = want + (f.q_s.T @ g @ f.q_a).square().mean(0) / 3
        torch.testing.assert_close(f.eigenvalues, want, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------- protocol and stages
def test_self_influence_is_diagonal_and_groups_sum(tiny_run):
    run, train, queries = tiny_run
    attr = make_attributor("source", segments=2, seeds="all", chunk_size=7)
    with pytest.raises(NotFittedError):
        attr.score(queries)
    attr.fit(run, train)
    full = attr.score(train)
    assert full.shape == (len(train), len(train)) and full.dtype == torch.float32
    torch.testing.assert_close(attr.self_influence(), full.diagonal(), rtol=1e-5, atol=1e-7)
    groups = torch.rand(4, len(train), generator=torch.Generator().manual_seed(0)) < 0.3
    torch.testing.assert_close(
        attr.score_groups(queries, groups), attr.score(queries) @ groups.float().T, rtol=1e-5, atol=1e-6
    )
    # chunking does not change the result
    other = make_attributor("source", segments=2, seeds="all", chunk_size=512).fit(run, train)
    torch.testing.assert_close(other.score(queries), attr.score(queries), rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def staged_case():
    """A two-stage MLP: pre-train on examples 0..29, fine-tune on 30..59 (disjoint)."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(72, 6, generator=gen)
    y = (x[:, 0] - x[:, 3] > 0).long()
    train, queries = (
        as_examples(x[:60], y[:60], "t", ("a", "b")),
        as_examples(x[60:], y[60:], "q", ("a", "b")),
    )
    part_a = np.arange(60) < 30
    pre = TrainConfig(optimizer="sgd", lr=0.3, epochs=4, batch_size=10, checkpoints=2, weight_decay=1e-2)
    fine = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.5, epochs=3, batch_size=10, checkpoints=2)
    staged = StagedConfig((Stage(pre, part_a, "A"), Stage(fine, ~part_a, "B")))
    mcfg = MLPConfig(hidden=(4,))
    with torch.random.fork_rng():
        ckpts = train_staged_model(mcfg, staged, train, seed=0).checkpoints
    run = TrainedRun("staged", {}, mcfg, fine, (0,), (6,), 2, {0: ckpts}, {}, stages=staged)
    return run, train, queries, part_a


def test_stage_boundaries_and_absent_examples(staged_case):
    run, train, queries, part_a = staged_case
    attr = make_attributor("source", segments=2, damping=0.0).fit(run, train)
    seg_a, seg_b = attr.segments_[0]
    assert (seg_a["stage"], seg_b["stage"]) == (0, 1) and seg_a["checkpoints"] == [0, 1]
    assert seg_b["averaged"] == [1, 2, 3]  # stage B starts from stage A's last weights
    assert (seg_a["n_examples"], seg_b["n_examples"]) == (30, 30)
    assert seg_b["eta"] == pytest.approx(seg_b["lr"] / 0.5) and seg_a["eta"] == pytest.approx(
        seg_a["lr"] / 0.1
    )
    x, y = train.inputs.double(), train.labels
    keep_a, keep_b = torch.from_numpy(part_a), torch.from_numpy(~part_a)

    def curvature(seg, keep):
        models = [run.model(0, i).double() for i in seg["averaged"]]
        kw = {"damping": 0.0, "weight_decay": seg["weight_decay"], "dtype": torch.float64, "device": CPU}
        return fit_averaged([KroneckerCurvature(m, **kw) for m in models], x[keep]), models

    curv_a, models_a = curvature(seg_a, keep_a)
    curv_b, models_b = curvature(seg_b, keep_b)
    g_a = sum(example_grads(m, x, y, dtype=torch.float64, device=CPU) for m in models_a) / len(models_a)
    g_b = sum(example_grads(m, x, y, dtype=torch.float64, device=CPU) for m in models_b) / len(models_b)
    ek_a, ek_b = seg_a["eta_k"], seg_b["eta_k"]
    from_a = curv_a.apply_spectral(g_a, lambda s: segment_response(s, ek_a)) / 30
    r_a = curv_b.apply_spectral(from_a, lambda s: segment_decay(s, ek_b))  # carried through stage B only
    r_b = curv_b.apply_spectral(g_b, lambda s: segment_response(s, ek_b)) / 30  # no stage-A gradient
    responses = attr.members_[0].responses
    torch.testing.assert_close(responses[keep_a], r_a[keep_a], rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(responses[keep_b], r_b[keep_b], rtol=1e-6, atol=1e-10)
    # the last-segment term an A example would have had is far from zero, so leaving it out matters;
    # influence at the final weights (which uses it) ranks the A examples differently
    assert r_b[keep_a].norm() > 0.05 * r_a[keep_a].norm()
    influence = make_attributor("influence", damping=1e-3).fit(run, train).score(queries)
    assert spearmanr(attr.score(queries)[:, part_a].flatten(), influence[:, part_a].flatten())[0] < 0.95


def test_bad_settings():
    for bad in ({"segments": 0}, {"segments": 1.5}, {"damping": -1.0}, {"momentum": 1.0}, {"chunk_size": 0}):
        with pytest.raises(ConfigError):
            make_attributor("source", **bad)
    assert isinstance(Checkpoint(1, 1.0, 0.1, 0.1, 1, {}).stage, int)
