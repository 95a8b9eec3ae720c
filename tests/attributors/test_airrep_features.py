"""AirRep on the attributed model's frozen features (`backbone="model_features"`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.airrep import EncoderConfig, RankTrainConfig, build_encoder
from tda_explorer.attributors.airrep.model_features import (
    feature_projection,
    feature_set,
    feature_transform,
    last_layer_gradients,
    model_features,
    seed_gradients,
)
from tda_explorer.attributors.airrep.teacher import teacher_effects
from tda_explorer.attributors.airrep.train import encoder_config_key
from tda_explorer.backend.stats import random_subset_masks, spearman_rows
from tda_explorer.data import load_digits_splits
from tda_explorer.errors import ConfigError
from tda_explorer.models import MLPConfig, build_model
from tda_explorer.store import Workspace

from .conftest import make_run
from .test_airrep import TINY_TRAIN

MLP = MLPConfig(hidden=(12,))


@pytest.fixture(scope="module")
def tiny():
    """60 training digits, 20 label queries, an MLP run of 2 seeds with random weights."""
    s = load_digits_splits()
    states = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(MLP, (1, 8, 8), 10)
        states[seed] = [{k: v.detach().clone() for k, v in model.state_dict().items()}]
    run = make_run(MLP, TINY_TRAIN, states, (1, 8, 8), 10)
    return s.train.subset(range(60)), s.val.subset(range(20)), run


def test_features_are_the_head_gradient_of_the_loss(tiny):
    train, _, run = tiny
    model = run.model(0)
    feats = last_layer_gradients(model, train)
    d = model.head.in_features
    assert feats.shape == (60, 10 * (d + 1))
    for i in (0, 7, 33):
        model.zero_grad()
        x, y = train.inputs[i : i + 1].float(), train.labels[i : i + 1]
        F.cross_entropy(model(x), y).backward()
        block = feats[i].reshape(10, d + 1)  # class-major: [weight row c, bias c]
        torch.testing.assert_close(block[:, :d], model.head.weight.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(block[:, d], model.head.bias.grad, atol=1e-6, rtol=1e-5)
    both = model_features([run.model(0), run.model(1)], train)
    torch.testing.assert_close(
        both, torch.cat([feats, last_layer_gradients(run.model(1), train)], 1) / 2**0.5
    )


def test_transform_gives_the_damped_last_layer_kernel(tiny):
    train, val, run = tiny
    models = [run.model(0), run.model(1)]
    damping = 0.05
    t = feature_transform(models, train, feature_dim=0, damping=damping).double()
    got = model_features(models, val).double() @ t @ (model_features(models, train).double() @ t).T
    want = torch.zeros(len(val), len(train), dtype=torch.float64)
    for m in models:  # per seed: phi_q (Phi^T Phi / N + damping * mean eigenvalue * I)^-1 phi_i / S
        g, q = last_layer_gradients(m, train).double(), last_layer_gradients(m, val).double()
        cov = g.T @ g / len(g)
        lam = damping * float(torch.linalg.eigvalsh(cov).clamp_min(0).mean())
        want += q @ torch.linalg.solve(cov + lam * torch.eye(len(cov), dtype=cov.dtype), g.T) / len(models)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    # with a projection, the per-seed products W_s @ P_s equal the block-diagonal map times P
    grads = seed_gradients(models, train)
    projected = feature_transform(models, train, feature_dim=50, damping=damping, gradients=grads)
    p = feature_projection(t.shape[0], 50).double()
    assert projected.shape == (t.shape[0], 50)
    torch.testing.assert_close(projected.double(), t @ p, rtol=1e-4, atol=1e-5 * float((t @ p).abs().max()))
    assert not torch.equal(projected, feature_transform(models, train, 50, damping, seed=1))
    # the seed-by-seed projected features equal the concatenated features times the projection
    raw = model_features(models, train)
    torch.testing.assert_close(
        model_features(models, train, projected, grads), raw @ projected, rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ConfigError, match="rows"):
        model_features(models, train, projected[:-1])


def test_config_checks_and_unchanged_keys(tiny):
    train, _, _ = tiny
    assert "backbone" not in EncoderConfig().to_dict() and "feature_dim" not in EncoderConfig().to_dict()
    assert EncoderConfig().to_dict() == {  # the raw-input defaults, hence its encoder keys, are unchanged
        "dim": 128,
        "hidden": 256,
        "channels": (16, 32),
        "depth": 2,
        "max_length": 64,
        "freeze_text": False,
        "label_coupling": True,
        "image_backbone": "cnn",
        "skip": True,
        "init_scale": 0.3,
    }
    feats = EncoderConfig(backbone="model_features")
    assert feats.to_dict()["backbone"] == "model_features"
    assert (feats.dim, feats.depth, feats.label_coupling) == (1024, 1, False)  # this backbone's defaults
    assert EncoderConfig(backbone="model_features", dim=64, label_coupling=True).dim == 64  # explicit wins
    with pytest.raises(ConfigError, match="feature_dim=0"):
        EncoderConfig(backbone="model_features", feature_dim=0)
    assert EncoderConfig(backbone="model_features", feature_dim=0, dim=300).dim == 300
    with pytest.raises(ConfigError, match="backbone"):
        EncoderConfig(backbone="pixels")
    with pytest.raises(ConfigError, match="feature_dim"):
        EncoderConfig(backbone="model_features", feature_dim=-1)
    with pytest.raises(ConfigError, match="model features"):
        build_encoder(EncoderConfig(backbone="model_features"), train)  # raw images, not the feature set
    data = SimpleNamespace(key="d")
    plain = encoder_config_key(data, EncoderConfig(), RankTrainConfig(), "sum")
    assert "inputs" not in plain  # the keys of encoders on raw inputs are unchanged
    run_a = encoder_config_key(data, EncoderConfig(), RankTrainConfig(), "sum", {"weights": "a"})
    assert run_a != encoder_config_key(data, EncoderConfig(), RankTrainConfig(), "sum", {"weights": "b"})


def test_untrained_student_scores_with_the_feature_dot_product(tiny):
    """With the model-features defaults (dim = feature_dim, no label coupling) the untrained encoder is an
    isometry of its (whitened, projected) inputs up to a constant: scores = c * features' dot product."""
    train, val, run = tiny
    models = [run.model(s) for s in run.seeds]
    cfg = EncoderConfig(backbone="model_features", feature_dim=40, hidden=8)
    assert (cfg.dim, cfg.depth, cfg.label_coupling) == (40, 1, False)
    t = feature_transform(models, train, 40, cfg.feature_damping)
    ft, fq = feature_set(models, train, t), feature_set(models, val, t)
    enc = build_encoder(cfg, ft, seed=3)
    got = (enc.embed(enc.prepare(fq)) @ enc.embed(enc.prepare(ft)).T).double()
    want = (fq.inputs @ ft.inputs.T).double()
    c = float((got * want).sum() / want.square().sum())
    assert c > 0
    torch.testing.assert_close(got, c * want, rtol=1e-3, atol=1e-4 * float(got.abs().max()))


def test_student_learns_a_teacher_its_initial_kernel_does_not_match(tmp_path, tiny):
    """A teacher scoring with a random rank-3 bilinear form of the (whitened, projected) features,
    `fq @ B @ B.T @ ft.T`: the encoder's linear skip can represent it, but its orthonormal initialisation
    scores with `fq @ ft.T`, which ranks the training examples differently. Training must move the encoder
    off its initialisation (best epoch >= 0) and raise the agreement with the teacher, on the held-out
    subsets and on the example scores."""
    train, val, run = tiny
    models = [run.model(s) for s in run.seeds]
    width = 40
    enc = {"backbone": "model_features", "feature_dim": width, "hidden": 8}
    t = feature_transform(models, train, width, EncoderConfig(**enc).feature_damping)
    ft, fq = feature_set(models, train, t).inputs, feature_set(models, val, t).inputs
    b = torch.randn(width, 3, generator=torch.Generator().manual_seed(0))
    scores = (fq @ b @ b.T @ ft.T).numpy()
    initial_rho = spearman_rows((fq @ ft.T).double().numpy(), scores).mean()
    assert initial_rho < 0.5  # the starting kernel is not the teacher

    teacher = make_attributor("grad_dot")
    teacher.fitted_ = True
    teacher.score = lambda _queries: torch.from_numpy(scores)
    air = make_attributor(
        "airrep",
        encoder=enc,
        pooling="sum",
        data={"n_subsets": 64},
        training={"epochs": 8, "subsets_per_step": 16, "queries_per_step": 16, "lr": 1e-2},
        workspace=Workspace(tmp_path),
        label_queries=val,
        teacher=teacher,
    )
    air.fit(run, train)
    hist, best = air.trained_.history, air.trained_.best_epoch
    assert best >= 0  # a trained epoch beat the initialisation on held-out teacher labels
    assert hist[best + 1]["heldout_lds"] > hist[0]["heldout_lds"] + 0.3
    rho = spearman_rows(air.score(val).double().numpy(), scores).mean()
    assert rho > max(0.8, initial_rho + 0.4)
    masks = random_subset_masks(len(train), 30, 99, range(40))
    groups = air.score_groups(val, torch.from_numpy(masks)).double().numpy()
    initial_groups = (fq @ ft.T).double().numpy() @ masks.T.astype(float)
    effects = teacher_effects(scores, masks)
    assert spearman_rows(groups, effects).mean() > spearman_rows(initial_groups, effects).mean() + 0.2
    assert air.trained_.key  # the encoder artifact is keyed by the run (its features' weights) too
    assert air.feature_models_ is not None and len(air.feature_models_) == 2


def test_heldout_loss_is_the_same_block_by_block(tiny, monkeypatch):
    """The held-out ranking loss over all subset pairs, computed a block of queries at a time (memory bound
    for thousands of held-out subsets), equals the one-block mean over all pairs."""
    from tda_explorer.attributors.airrep import train as train_mod

    train, val, _ = tiny
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(30, len(train), generator=gen) < 0.5
    labels = torch.randn(len(val), 30, generator=gen, dtype=torch.float64)
    labels[:, 5] = labels[:, 6]  # ties are not pairs
    enc = build_encoder(EncoderConfig(dim=8, hidden=8, image_backbone="mlp"), train)
    cfg = RankTrainConfig()
    problem = train_mod._RankProblem(enc.prepare(train), enc.prepare(val), masks, labels, "attention", cfg)
    qs, subs = torch.arange(len(val)), torch.arange(30)
    whole = problem.heldout_metrics(enc, qs, subs)
    monkeypatch.setattr(train_mod, "_PAIR_BLOCK", 30 * 30 * 3)  # 3 queries per block
    blocked = problem.heldout_metrics(enc, qs, subs)
    assert blocked[0] == whole[0] and blocked[1] == pytest.approx(whole[1], rel=1e-5)
