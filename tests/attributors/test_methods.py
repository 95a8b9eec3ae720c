"""TRAK, TracIn, RepSim formulas and, for every attributor, self-influence = diagonal of the score matrix."""

from __future__ import annotations

import pytest
import torch

from tda_explorer.attributors import make_attributor
from tda_explorer.backend.grads import ParamSubset, example_grads
from tda_explorer.backend.layers import LayerInfo, find_layers
from tda_explorer.backend.projection import kronecker_features, kronecker_sizes
from tda_explorer.errors import ConfigError, NotFittedError
from tda_explorer.models import LogRegConfig, build_model
from tda_explorer.training import TrainConfig
from tests.fixtures import assert_same_attribution

from .conftest import as_examples, make_run

CPU = torch.device("cpu")

ALL_METHODS = [
    ("influence", {"solver": "ekfac"}),
    ("influence", {"solver": "kfac", "damping": 0.05}),
    ("influence", {"solver": "exact", "damping": 0.5}),
    ("influence", {"solver": "cg", "damping": 0.5}),
    ("influence", {"solver": "lissa", "damping": 0.5, "tol": 1e-10}),
    ("influence", {"solver": "ekfac", "params": "head", "seeds": "all"}),
    ("trak", {"proj_dim": 16}),
    ("trak", {"proj_dim": None, "damping": 0.1, "checkpoints": "all"}),
    ("trak", {"proj_dim": 96}),  # k > N = 48: the kernel inverse is taken in the N-space (dual)
    ("trak", {"proj_dim": 16, "proj_type": "sjlt"}),  # features recomputed on use
    ("trak", {"proj_dim": 96, "proj_type": "sjlt"}),  # dual
    ("trak", {"proj_dim": 24, "proj_layout": "kronecker"}),
    ("trak", {"proj_dim": 200, "proj_layout": "kronecker"}),
    ("tracin", {}),
    ("tracin", {"proj_dim": 32, "seeds": "all", "lr_source": "segment_mean_lr"}),
    ("tracin", {"proj_dim": 32, "proj_type": "sjlt"}),
    ("repsim", {"seeds": "all"}),
    ("grad_dot", {}),
]


@pytest.mark.parametrize(("method", "settings"), ALL_METHODS, ids=lambda v: str(v))
def test_self_influence_is_score_diagonal_and_groups_sum(tiny_run, method, settings):
    run, train, queries = tiny_run
    attr = make_attributor(method, **settings)
    with pytest.raises(NotFittedError):
        attr.self_influence()
    attr.fit(run, train)
    full = attr.score(train)
    assert full.shape == (len(train), len(train)) and full.dtype == torch.float32
    torch.testing.assert_close(attr.self_influence(), full.diagonal(), rtol=1e-5, atol=1e-7)
    groups = torch.rand(4, len(train), generator=torch.Generator().manual_seed(0)) < 0.3
    scores = attr.score(queries)
    torch.testing.assert_close(
        attr.score_groups(queries, groups), scores @ groups.float().T, rtol=1e-5, atol=1e-6
    )


def tiny_logreg_run(seeds=(0,), n=80):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n + 10, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n + 10,), generator=gen)
    states = {}
    for s in seeds:
        torch.manual_seed(s)
        states[s] = [
            {k: v.detach().clone() for k, v in build_model(LogRegConfig(), (8,), 3).state_dict().items()}
        ]
    run = make_run(LogRegConfig(), TrainConfig(), states, (8,), 3)
    return (
        run,
        as_examples(x[:n], y[:n], "t", ("a", "b", "c")),
        as_examples(x[n:], y[n:], "q", ("a", "b", "c")),
    )


@pytest.mark.parametrize("proj_dim", [27, 40, None])
def test_trak_with_full_projection_matches_unprojected_formula(proj_dim):
    """k >= p (= 27) and lambda = 0: phi (Phi^T Phi)^+ Phi^T = g (G^T G)^{-1} G^T, times Q = 1 - p_y (a dense,
    full-rank projection; the default count sketch collides coordinates even at k >= p)."""
    run, train, queries = tiny_logreg_run()
    attr = make_attributor("trak", proj_dim=proj_dim, proj_type="rademacher", damping=0.0).fit(run, train)
    model = run.model().double()
    g = example_grads(model, train.inputs.double(), train.labels, objective="margin", device=CPU)
    gq = example_grads(model, queries.inputs.double(), queries.labels, objective="margin", device=CPU)
    with torch.no_grad():
        q = 1 - torch.softmax(model(train.inputs.double()), -1).gather(1, train.labels[:, None]).squeeze(1)
    want = gq @ torch.linalg.solve(g.T @ g, g.T) * q
    torch.testing.assert_close(attr.score(queries).double(), want, rtol=1e-4, atol=1e-6)


def test_trak_averages_kernel_and_q_over_models():
    run, train, queries = tiny_logreg_run(seeds=(0, 1))
    both = make_attributor("trak", proj_dim=None, damping=0.01).fit(run, train)
    singles = [make_attributor("trak", proj_dim=None, damping=0.01) for _ in range(2)]
    kernels, qs = [], []
    for s, a in zip((0, 1), singles, strict=True):
        a.fit(
            make_run(LogRegConfig(), TrainConfig(), {s: [c.state for c in run.checkpoints[s]]}, (8,), 3),
            train,
        )
        kernels.append(a.score(queries).double() / a.q_)
        qs.append(a.q_)
    want = (kernels[0] + kernels[1]) / 2 * (qs[0] + qs[1]) / 2
    torch.testing.assert_close(both.score(queries).double(), want, rtol=1e-6, atol=1e-8)


def test_tracin_sums_lr_weighted_dots_over_checkpoints(tiny_run):
    run, train, queries = tiny_run
    attr = make_attributor("tracin").fit(run, train)
    want = 0
    for i, c in enumerate(run.checkpoints[run.seeds[0]]):
        m = run.model(run.seeds[0], i).double()
        g = example_grads(m, train.inputs.double(), train.labels, device=CPU)
        gq = example_grads(m, queries.inputs.double(), queries.labels, device=CPU)
        want = want + c.lr * gq @ g.T
    torch.testing.assert_close(attr.score(queries).double(), want, rtol=1e-5, atol=1e-7)
    projected = make_attributor("tracin", proj_dim=4096, proj_type="gaussian").fit(run, train).score(queries)
    assert torch.corrcoef(torch.stack([projected.flatten().double(), want.flatten()]))[0, 1] > 0.95


def test_repsim_is_cosine_of_features(tiny_run):
    run, train, queries = tiny_run
    attr = make_attributor("repsim").fit(run, train)
    assert attr.rank_only
    m = run.model().double()
    with torch.no_grad():
        f, fq = m.features(train.inputs.double()), m.features(queries.inputs.double())
    want = torch.nn.functional.cosine_similarity(fq[:, None], f[None], dim=-1)
    torch.testing.assert_close(attr.score(queries).double(), want, rtol=1e-6, atol=1e-6)


def test_bad_settings_raise_config_errors(tiny_run):
    run, train, _ = tiny_run
    with pytest.raises(ConfigError):
        make_attributor("trak", proj_type="sparse")
    with pytest.raises(ConfigError):
        make_attributor("trak", checkpoints="best")
    with pytest.raises(ConfigError):
        make_attributor("tracin", lr_source="max")
    with pytest.raises(ConfigError):
        make_attributor("trak", n_models=5).fit(run, train)
    with pytest.raises(ConfigError):
        make_attributor("repsim").fit(run, train).score_groups(train, torch.ones(2, 3, dtype=torch.bool))


def test_trak_per_model_projections_are_seeded_per_model():
    """`proj_per_model`: model i is projected with seed `proj_seed + i`; scores average the per-model parts."""
    run, train, queries = tiny_logreg_run(seeds=(0, 1))
    kw = {"proj_dim": 8, "damping": 0.01, "proj_seed": 5}
    both = make_attributor("trak", **kw).fit(run, train)  # per-model projections are the default
    assert [m.projector.seed for m in both.models_] == [5, 6]
    shared = make_attributor("trak", proj_per_model=False, **kw).fit(run, train)
    assert not torch.allclose(both.score(queries), shared.score(queries))
    parts, qs = [], []
    for i, s in enumerate((0, 1)):
        single = make_run(LogRegConfig(), TrainConfig(), {s: [c.state for c in run.checkpoints[s]]}, (8,), 3)
        a = make_attributor("trak", **{**kw, "proj_seed": 5 + i}).fit(single, train)
        parts.append(a.score(queries).double() / a.q_)
        qs.append(a.q_)
    want = (parts[0] + parts[1]) / 2 * (qs[0] + qs[1]) / 2
    torch.testing.assert_close(both.score(queries).double(), want, rtol=1e-5, atol=1e-7)
    # one model: identical to the shared projection
    one = make_run(LogRegConfig(), TrainConfig(), {0: [c.state for c in run.checkpoints[0]]}, (8,), 3)
    torch.testing.assert_close(
        make_attributor("trak", **kw).fit(one, train).score(queries),
        make_attributor("trak", proj_per_model=False, **kw).fit(one, train).score(queries),
    )


@pytest.mark.parametrize("proj_dim", [8, 120])
def test_trak_relative_lambda_is_relative_to_the_mean_nonzero_eigenvalue(proj_dim):
    """damping=None: lambda_m = factor x trace(Phi_m^T Phi_m) / min(k, N); k > N (= 80) solves in the
    N-space, same scores."""
    run, train, queries = tiny_logreg_run(seeds=(0, 1))
    auto = make_attributor(
        "trak", proj_dim=proj_dim, proj_type="rademacher", damping=None, damping_factor=0.5
    ).fit(run, train)
    phis = [m.phi.double() for m in auto.models_]
    want = [0.5 * float(phi.square().sum()) / min(proj_dim, len(train)) for phi in phis]
    assert auto.damping_ == pytest.approx(want) and want[0] != pytest.approx(want[1])
    assert [m.dual for m in auto.models_] == [proj_dim > len(train)] * 2
    kernel = 0
    for m, phi, lam in zip(auto.models_, phis, want, strict=True):  # the primal formula, directly
        k = phi.shape[1]
        inv = torch.linalg.inv(phi.T @ phi + lam * torch.eye(k, dtype=torch.float64))
        if not m.dual:
            torch.testing.assert_close(m.kernel.solve(torch.eye(k)).double(), inv, rtol=1e-4, atol=1e-8)
        pq = auto._features(m, queries).double()
        kernel = kernel + pq @ inv @ phi.T / 2
    torch.testing.assert_close(auto.score(queries).double(), kernel * auto.q_, rtol=1e-4, atol=1e-7)
    with pytest.raises(ConfigError):
        make_attributor("trak", damping_factor=-1.0)


def test_trak_kronecker_layout_uses_per_layer_kronecker_features():
    """proj_layout="kronecker": phi = kronecker_features(margin) with `kronecker_sizes`, seed proj_seed + i."""
    run, train, queries = tiny_logreg_run(seeds=(0, 1))
    attr = make_attributor(
        "trak", proj_dim=12, proj_type="rademacher", proj_layout="kronecker", proj_seed=3, damping=0.05
    )
    attr.fit(run, train)
    assert all(m.phi is None for m in attr.models_)  # recomputed on use, never stored
    kernel = 0
    for i, seed in enumerate((0, 1)):
        model = run.model(seed).double()
        sizes = kronecker_sizes(find_layers(model, ParamSubset.resolve(model, "all")), 12)
        assert sizes == [(4, 3)]  # one layer: k_out = round(sqrt(12)) = 3 (<= 3 classes), k_in = 12 // 3
        feats = [
            kronecker_features(model, ex.inputs, ex.labels, seed=3 + i, objective="margin", sizes=sizes)
            for ex in (train, queries)
        ]
        phi, pq = (f.double() for f in feats)
        kernel = (
            kernel + pq @ torch.linalg.solve(phi.T @ phi + 0.05 * torch.eye(12, dtype=phi.dtype), phi.T) / 2
        )
    torch.testing.assert_close(attr.score(queries).double(), kernel * attr.q_, rtol=1e-5, atol=1e-8)
    with pytest.raises(ConfigError, match="proj_layout"):
        make_attributor("trak", proj_layout="sparse")
    with pytest.raises(ConfigError, match="kronecker"):
        make_attributor("trak", proj_dim=None, proj_layout="kronecker")


def test_kronecker_sizes_share_the_budget_and_never_exceed_a_side():
    layers = [
        LayerInfo("a", "linear", 785, 256, True, (0, 1), None),
        LayerInfo("b", "linear", 129, 10, True, (0, 1), None),
    ]
    # 1,024 columns per layer: 32 x 32; the 10-class head keeps its 10 outputs and takes 102 inputs
    assert kronecker_sizes(layers, 2048) == [(32, 32), (102, 10)]
    assert kronecker_sizes(layers[1:], 100_000) == [(129, 10)]  # never more than a side has
    with pytest.raises(ConfigError):
        kronecker_sizes(layers, 1)


@pytest.mark.parametrize(
    ("method", "settings"),
    [("grad_dot", {}), ("grad_cos", {"seeds": "all"}), ("tracin", {"seeds": "all"}), ("repsim", {})],
    ids=str,
)
def test_feature_dot_streams_train_features_when_they_do_not_fit(tiny_run, monkeypatch, method, settings):
    """Above the cache limit the train features are recomputed in chunks: same scores, nothing cached."""
    import tda_explorer.attributors.base as base

    run, train, queries = tiny_run
    cached = make_attributor(method, **settings).fit(run, train)
    assert not cached.streaming_ and cached.train_features_ is not None
    monkeypatch.setattr(base, "FEATURE_CACHE_BYTES", 0)
    monkeypatch.setattr(base, "STREAM_CHUNK_BYTES", 7 * 8 * 16)  # a few examples per chunk
    streamed = make_attributor(method, **settings).fit(run, train)
    assert streamed.streaming_ and streamed.train_features_ is None
    groups = torch.rand(3, len(train)) > 0.5
    assert_same_attribution(streamed, cached, queries, groups, rtol=1e-5, atol=1e-6, group_atol=1e-5)


def test_trak_sjlt_ghost_sketch_equals_materialised_gradients(tiny_run, monkeypatch):
    """TRAK with a count-sketch projection sketches Linear layers from their factors: same scores."""
    import tda_explorer.attributors.base as base

    run, train, queries = tiny_run
    kw = {"proj_dim": 16, "proj_type": "sjlt", "n_models": 2}
    ghost = make_attributor("trak", **kw).fit(run, train)
    monkeypatch.setattr(base, "USE_GHOST", False)
    dense = make_attributor("trak", **kw).fit(run, train)
    torch.testing.assert_close(ghost.score(queries), dense.score(queries), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ghost.self_influence(), dense.self_influence(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["grad_dot", "grad_cos", "tracin"])
def test_ghost_path_equals_materialised_gradients(tiny_run, monkeypatch, method):
    """Linear-only models use ghost dot products; the scores equal those of materialised gradients."""
    import tda_explorer.attributors.base as base

    run, train, queries = tiny_run
    ghost = make_attributor(method, params="all", seeds="all").fit(run, train)
    assert not isinstance(ghost.train_features_[0], torch.Tensor)  # factors, not [N, p] gradients
    monkeypatch.setattr(base, "USE_GHOST", False)
    dense = make_attributor(method, params="all", seeds="all").fit(run, train)
    assert isinstance(dense.train_features_[0], torch.Tensor)
    groups = torch.rand(4, len(train)) > 0.5
    torch.testing.assert_close(ghost.score(queries), dense.score(queries), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ghost.self_influence(), dense.self_influence(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        ghost.score_groups(queries, groups), dense.score_groups(queries, groups), rtol=1e-4, atol=1e-5
    )
