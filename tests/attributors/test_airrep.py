"""AirRep: pooling formulas, labels, ranking loss, encoder training, resumable data, disjoint subsets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.airrep import (
    AirRepData,
    AirRepDataConfig,
    EncoderConfig,
    RankTrainConfig,
    attention_pool,
    attention_pool_masked,
    build_encoder,
    check_disjoint_subsets,
    generate_airrep_data,
    group_scores,
    normalise_labels,
    pairwise_ranking_loss,
    sum_pool,
    train_encoder,
    training_subset_masks,
)
from tda_explorer.data import load_digits_splits
from tda_explorer.errors import ConfigError, NotFittedError
from tda_explorer.evaluation import LDSConfig, subset_masks
from tda_explorer.models import LogRegConfig
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, TrainConfig

from .conftest import as_examples, make_run

TINY_TRAIN = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, epochs=2, batch_size=32, checkpoints=1)


@pytest.fixture(scope="module")
def digits_tiny():
    """80 training digits, 24 validation (label) queries, 16 test queries (8x8 images)."""
    s = load_digits_splits()
    return s.train.subset(range(80)), s.val.subset(range(24)), s.test.subset(range(16))


def tiny_run():
    return make_run(LogRegConfig(), TINY_TRAIN, {0: [{}]}, (1, 8, 8), 10)


# ------------------------------------------------------------------------------------------ pooling
def test_attention_pool_matches_hand_computation():
    s = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 2.0, -1.0]], dtype=torch.float64)
    masks = torch.tensor([[1, 1, 0, 1], [0, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    got = attention_pool(s, masks)
    want = torch.zeros(2, 4, dtype=torch.float64)
    for q in range(2):
        for j in range(3):
            vals = [s[q, i].item() for i in range(4) if masks[j, i]]
            z = sum(math.exp(v) for v in vals)
            want[q, j] = sum(math.exp(v) / z * v for v in vals)
    torch.testing.assert_close(got, want)  # the empty group (j = 3) scores 0


def test_attention_pool_limits():
    s = torch.tensor([[0.3, -1.2, 2.0, 0.7]], dtype=torch.float64)
    one = torch.eye(4, dtype=torch.bool)  # group j = {j}
    torch.testing.assert_close(attention_pool(s, one), s)  # one member -> its score
    equal = torch.full((1, 4), 1.7, dtype=torch.float64)
    masks = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(attention_pool(equal, masks), torch.full((1, 2), 1.7, dtype=torch.float64))
    # Equal scores -> the mean; large scale -> the maximum of the members.
    torch.testing.assert_close(attention_pool(s * 200, masks[:1]) / 200, s[:, [0, 1, 3]].amax(1, True))


def test_sum_pooling_and_chunked_group_scores():
    gen = torch.Generator().manual_seed(0)
    q, t = torch.randn(7, 5, generator=gen), torch.randn(30, 5, generator=gen)
    masks = torch.rand(11, 30, generator=gen) < 0.4
    scores = q @ t.T
    want = scores.double() @ masks.double().T
    torch.testing.assert_close(sum_pool(scores, masks), want)  # float64: groups are large
    torch.testing.assert_close(group_scores(q, t, masks, "sum"), want.float())
    direct = attention_pool(scores, masks)
    torch.testing.assert_close(direct, attention_pool_masked(scores, masks))  # matmul form = masked form
    torch.testing.assert_close(group_scores(q, t, masks, "attention", query_chunk=2), direct.float())


def test_attention_pool_far_below_the_best_score_and_gradients():
    s = torch.tensor([[0.0, -2000.0, -2001.0, 5.0]], dtype=torch.float64, requires_grad=True)
    masks = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
    got = attention_pool(s, masks)  # group 0 underflows exp(s - max) and falls back to the masked form
    torch.testing.assert_close(got, attention_pool_masked(s, masks))
    w = torch.softmax(torch.tensor([-2000.0, -2001.0], dtype=torch.float64), 0)
    assert got[0, 0].item() == pytest.approx((w * torch.tensor([-2000.0, -2001.0])).sum().item())
    (g1,) = torch.autograd.grad(got.sum(), s)
    (g2,) = torch.autograd.grad(attention_pool_masked(s, masks).sum(), s)
    torch.testing.assert_close(g1, g2)


def test_attention_pool_fallback_works_block_by_block(monkeypatch):
    """Many underflowing groups: the masked fallback runs in blocks of groups (memory bound), same values."""
    from tda_explorer.attributors.airrep import pooling

    gen = torch.Generator().manual_seed(0)
    s = torch.randn(3, 20, generator=gen, dtype=torch.float64)
    s[:, 0] = 5000.0  # every group without example 0 underflows
    masks = torch.rand(40, 20, generator=gen) < 0.4
    masks[:, 0] = torch.arange(40) % 5 == 0
    monkeypatch.setattr(pooling, "_MASKED_BLOCK", 3 * 20 * 4)  # 4 groups per block
    torch.testing.assert_close(attention_pool(s, masks), attention_pool_masked(s, masks))


# --------------------------------------------------------------------------------- labels and loss
def test_label_normalisation():
    losses = np.array([[1.0, 2.0, 5.0], [3.0, 2.0, 5.0], [2.0, 2.0, 5.0]])  # [M=3 subsets, 3 queries]
    r = normalise_labels(losses)
    assert r.shape == (3, 3) and r.dtype == np.float32
    std = np.std([1.0, 3.0, 2.0])
    np.testing.assert_allclose(r[0], [(2 - 1) / std, (2 - 3) / std, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(r[1:], 0.0)  # std 0 -> divided by 1; loss == mean -> 0
    spiky = np.array([[0.0]] * 200 + [[1000.0]])  # one outlier far beyond 10 std
    assert normalise_labels(spiky).min() == -10.0


def test_pairwise_loss_weights_and_direction():
    r = torch.tensor([[2.0, 0.0, 1.95]])
    f = torch.tensor([[0.5, -0.3, 0.1]])
    # pairs with r_i > r_j: (0,1) w=2, (0,2) w=clip(0.05)=0.1, (2,1) w=1.95
    terms = [(2.0, 0.5 - -0.3), (0.1, 0.5 - 0.1), (1.95, 0.1 - -0.3)]
    want = sum(w * math.log1p(math.exp(-d)) for w, d in terms) / 3
    assert pairwise_ranking_loss(f, r).item() == pytest.approx(want, rel=1e-6)
    big = torch.tensor([[9.0, 0.0]])
    assert pairwise_ranking_loss(torch.tensor([[1.0, 0.0]]), big).item() == pytest.approx(
        5.0 * math.log1p(math.exp(-1.0)), rel=1e-6
    )  # weight clipped to 5
    right = pairwise_ranking_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    wrong = pairwise_ranking_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    assert right < wrong
    assert pairwise_ranking_loss(f, torch.ones(1, 3)).item() == 0.0  # no ordered pair


def linear_toy():
    """Labels made by a hidden linear embedding (attention-pooled); a linear encoder can rank them."""
    gen = torch.Generator().manual_seed(0)
    d, n, nq, m = 6, 60, 40, 48
    a = torch.randn(d, 3, generator=gen)
    x = torch.randn(n + nq, d, generator=gen)
    y = torch.zeros(n + nq, dtype=torch.long)
    train, queries = as_examples(x[:n], y[:n], "t", ("a",)), as_examples(x[n:], y[n:], "q", ("a",))
    masks = np.random.default_rng(0).random((m, n)) < 0.5
    true_f = attention_pool((queries.inputs @ a) @ (train.inputs @ a).T, torch.from_numpy(masks))
    losses = -true_f.T.double().numpy()  # [M, nq]: larger f = lower loss
    data = AirRepData(
        masks, losses[:, None], losses, normalise_labels(losses), train.ids, queries.ids,
        AirRepDataConfig(n_subsets=m), "toy", 0.0,
    )  # fmt: skip
    return data, train, queries


TOY_ENCODER = EncoderConfig(dim=8, hidden=16, depth=1)


def test_training_lowers_ranking_loss_on_a_linear_toy(tmp_path):
    data, train, queries = linear_toy()
    cfg = RankTrainConfig(lr=1e-2, epochs=25, subsets_per_step=16, queries_per_step=32, patience=25)
    trained = train_encoder(data, train, queries, TOY_ENCODER, cfg, "attention", Workspace(tmp_path))
    hist = trained.history
    assert hist[0]["epoch"] == -1 and hist[0]["train_loss"] is None  # the initial encoder
    assert hist[-1]["train_loss"] < 0.7 * hist[1]["train_loss"]
    assert min(h["heldout_loss"] for h in hist[1:]) < 0.7 * hist[0]["heldout_loss"]
    assert hist[trained.best_epoch + 1]["heldout_lds"] > max(0.6, hist[0]["heldout_lds"])
    again = train_encoder(data, train, queries, TOY_ENCODER, cfg, "attention", Workspace(tmp_path))  # cached
    assert again.key == trained.key and again.best_epoch == trained.best_epoch
    for p, q in zip(again.encoder.parameters(), trained.encoder.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_encoder_training_resumes_from_its_checkpoint(tmp_path):
    data, train, queries = linear_toy()
    cfg = RankTrainConfig(lr=1e-2, epochs=4, subsets_per_step=16, queries_per_step=32, patience=4)

    def killed(done: int, total: int, msg: str) -> None:
        if done == total // 2 + 1:  # in epoch 3, after two checkpoints
            raise KeyboardInterrupt("simulated interruption")

    ws = Workspace(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train_encoder(data, train, queries, TOY_ENCODER, cfg, "attention", ws, killed)
    assert len(ws.list("airrep_ckpt")) == 1 and not ws.list("airrep_encoder")
    assert ws.list("airrep_ckpt")[0]["extra"]["epoch"] == 2
    resumed = train_encoder(data, train, queries, TOY_ENCODER, cfg, "attention", ws)
    whole = train_encoder(data, train, queries, TOY_ENCODER, cfg, "attention", Workspace(tmp_path / "b"))
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in whole.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == strip
    for p, q in zip(resumed.encoder.parameters(), whole.encoder.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


# ----------------------------------------------------------------------------- data generation
class FailingExecutor:
    """Runs the first `ok_calls` map calls (shards) in-process, then raises (a killed generation)."""

    def __init__(self, ok_calls: int) -> None:
        self.ok_calls, self.calls = ok_calls, 0

    def map(self, fn, jobs, progress=None, on_result=None):
        self.calls += 1
        if self.calls > self.ok_calls:
            raise KeyboardInterrupt("simulated interruption")
        return LocalExecutor(1).map(fn, jobs, progress, on_result)


def test_data_generation_resumes_after_interruption(tmp_path, digits_tiny):
    train, val, _ = digits_tiny
    cfg = AirRepDataConfig(n_subsets=6, shard_size=2, alpha=0.5)
    args = (train, val, (LogRegConfig(), TINY_TRAIN), cfg)
    ws = Workspace(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        generate_airrep_data(*args, workspace=ws, executor=FailingExecutor(ok_calls=1))
    assert len(ws.list("airrep_shard")) == 1 and not ws.list("airrep_data")
    counting = FailingExecutor(ok_calls=99)
    seen = []
    resumed = generate_airrep_data(
        *args, workspace=ws, executor=counting, progress=lambda d, t, m: seen.append((d, t))
    )
    assert counting.calls == 2  # the finished shard was reused
    assert seen[0] == (2, 6)  # progress starts from the finished shard
    whole = generate_airrep_data(*args, workspace=Workspace(tmp_path / "b"), executor=LocalExecutor(1))
    np.testing.assert_array_equal(resumed.masks, whole.masks)
    np.testing.assert_array_equal(resumed.seed_losses, whole.seed_losses)
    np.testing.assert_array_equal(resumed.labels, whole.labels)
    assert resumed.labels.shape == (len(val), 6) and resumed.masks.sum(1).tolist() == [40] * 6
    np.testing.assert_allclose(resumed.labels, normalise_labels(resumed.losses))
    again = generate_airrep_data(
        *args, workspace=ws, executor=FailingExecutor(ok_calls=0)
    )  # cached: no retraining
    assert again.key == resumed.key


def test_training_subsets_are_disjoint_from_evaluation_subsets(digits_tiny):
    train, val, _ = digits_tiny
    cfg = AirRepDataConfig(n_subsets=300, eval_n_subsets=100, alpha=0.5, eval_alpha=0.5)
    ours = training_subset_masks(4000, cfg)
    theirs = subset_masks(4000, LDSConfig(n_subsets=100, alpha=0.5, subset_seed=0))
    check_disjoint_subsets(ours, theirs)  # no training mask equals an evaluation mask
    assert not (ours[:, None, :] == theirs[None]).all(-1).any()
    with pytest.raises(ConfigError, match="identical"):
        check_disjoint_subsets(np.concatenate([ours[:3], theirs[7:8]]), theirs)
    with pytest.raises(ConfigError, match="subset_seed"):
        AirRepDataConfig(subset_seed=0, eval_subset_seed=0)
    with pytest.raises(ConfigError, match="training examples"):  # label queries must be held out
        generate_airrep_data(train, train.subset(range(5)), (LogRegConfig(), TINY_TRAIN), cfg)


# ------------------------------------------------------------------------------------ attributor
def test_attributor_end_to_end(tmp_path, digits_tiny):
    train, val, test = digits_tiny
    settings = {
        "encoder": {"dim": 8, "hidden": 16, "channels": [4]},
        "data": {"n_subsets": 12, "shard_size": 6},
        "training": {"epochs": 3, "subsets_per_step": 4, "queries_per_step": 8, "patience": 3},
    }
    ws = Workspace(tmp_path)
    attr = make_attributor("airrep", workspace=ws, executor=LocalExecutor(1), label_queries=val, **settings)
    with pytest.raises(NotFittedError):
        attr.score(test)
    messages = []
    attr.fit(tiny_run(), train)
    attr2 = make_attributor(
        "airrep",
        workspace=ws,
        executor=FailingExecutor(0),  # everything comes from the workspace
        label_queries=val,
        progress=lambda d, t, m: messages.append(m),
        **settings,
    ).fit(tiny_run(), train)
    torch.testing.assert_close(attr2.train_embeddings_, attr.train_embeddings_)
    scores = attr.score(test)
    assert scores.shape == (len(test), len(train)) and scores.dtype == torch.float32
    emb_q, emb_t = attr.embed(test), attr.train_embeddings_
    torch.testing.assert_close(scores, emb_q @ emb_t.T)
    torch.testing.assert_close(attr.self_influence(), attr.score(train).diagonal(), rtol=1e-5, atol=1e-6)
    groups = torch.rand(5, len(train), generator=torch.Generator().manual_seed(0)) < 0.5
    torch.testing.assert_close(
        attr.score_groups(test, groups), attention_pool(emb_q.double() @ emb_t.double().T, groups).float()
    )
    top = attr.top_k(test, k=3)
    torch.testing.assert_close(top.values, scores.topk(3, dim=1).values)
    assert set(attr.costs_) == {"data_seconds", "train_seconds"}
    summed = make_attributor("airrep", pooling="sum", workspace=ws, label_queries=val, **settings)
    summed.fit(tiny_run(), train)  # reuses the data, trains its own (sum-pooled) encoder
    s2 = summed.score(test)
    torch.testing.assert_close(summed.score_groups(test, groups), s2 @ groups.float().T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError):
        make_attributor("airrep", pooling="max")
    with pytest.raises(ConfigError):
        make_attributor("airrep", training={"no_such_field": 1})


def test_image_and_tabular_encoders_embed(digits_tiny):
    train, _, _ = digits_tiny
    enc = build_encoder(EncoderConfig(dim=5, hidden=7, channels=(3, 4)), train, seed=0)
    assert enc.out_dim == 50  # label coupling: n_classes * dim
    emb = enc.embed(enc.prepare(train), batch_size=13)
    assert emb.shape == (len(train), 50)
    other_label = train.labels[:, None] != train.labels[None, :]
    assert (emb @ emb.T)[other_label].abs().max() == 0  # class codes start at the identity
    plain = build_encoder(EncoderConfig(dim=5, label_coupling=False, image_backbone="mlp"), train, seed=0)
    assert plain.embed(plain.prepare(train)).shape == (len(train), 5)
    flat = as_examples(train.inputs.reshape(len(train), -1), train.labels, "f", train.class_names)
    enc = build_encoder(EncoderConfig(dim=5, hidden=7, depth=2), flat, seed=0)
    e1 = enc.embed(enc.prepare(flat), batch_size=7)
    torch.testing.assert_close(e1, enc.embed(enc.prepare(flat), batch_size=100))  # batch-size free
    with pytest.raises(ConfigError):
        build_encoder(EncoderConfig(channels=(2, 2, 2, 2)), train)  # 8x8 images allow 3 pools


@pytest.mark.slow
def test_text_encoder_loads_offline_and_embeds(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = ("a gripping, funny film", "dull and far too long", "a gripping, funny film")
    examples = as_examples(torch.zeros(3, 1), torch.tensor([1, 0, 1]), "s", ("neg", "pos"))
    examples = type(examples)(examples.ids, texts, examples.labels, examples.class_names, "text", "s")
    enc = build_encoder(EncoderConfig(dim=16, max_length=16), examples, seed=0)
    tokens, labels = enc.prepare(examples)
    assert tokens.shape == (3, 2, 16) and tokens.dtype == torch.int64
    emb = enc.embed((tokens, labels))
    assert emb.shape == (3, 32) and torch.isfinite(emb).all()  # 2 classes x dim 16
    torch.testing.assert_close(emb[0], emb[2])
    assert not torch.allclose(emb[0], emb[1])
