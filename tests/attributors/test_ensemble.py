"""Efficient ensembles: averaging, fixed dropout masks, LoRA members, self-influence, sign, cost report."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tda_explorer.attributors import ensemble_lora as el
from tda_explorer.attributors import ensemble_members as em
from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.ensemble_members import FixedDropout, dropout_masks, member_mask_seed
from tda_explorer.backend.features import true_class_probability
from tda_explorer.backend.grads import ParamSubset, example_grads
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import MLPConfig
from tda_explorer.store import Workspace
from tda_explorer.training import TrainConfig, TrainedRun, train_model

HIDDEN = (8, 6)


def _examples(x, y, prefix):
    return ExampleSet(tuple(f"{prefix}{i}" for i in range(len(y))), x, y, ("a", "b", "c"), "tabular", prefix)


@pytest.fixture(scope="module")
def dropout_run():
    """Three seeds of a small dropout MLP (2 checkpoints each) on 40 random examples, 10 queries."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    train, queries = _examples(x[:40], y[:40], "t"), _examples(x[40:], y[40:], "q")
    mcfg = MLPConfig(hidden=HIDDEN, dropout=0.3)
    tcfg = TrainConfig(optimizer="sgd", lr=0.2, weight_decay=1e-2, epochs=5, batch_size=16, checkpoints=2)
    results = {s: train_model(mcfg, tcfg, train, s) for s in (0, 1, 2)}
    run = TrainedRun(
        "ens-test",
        {},
        mcfg,
        tcfg,
        (0, 1, 2),
        (6,),
        3,
        {s: r.checkpoints for s, r in results.items()},
        {s: {"seconds": r.seconds} for s, r in results.items()},
    )
    return run, train, queries


def _one_seed(run: TrainedRun, seed: int) -> TrainedRun:
    return dataclasses.replace(run, seeds=(seed,))


def _close(a, b, tol=1e-6):
    """Equal up to `tol` relative to the largest entry (scores come out in float32)."""
    a, b = a.double(), b.double()
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max().clamp_min(1e-30)))


# ------------------------------------------------------------------------------------------- averaging
@pytest.mark.parametrize(
    "base, settings, key, everything",
    [
        ("grad_dot", {"params": "all"}, "seeds", "all"),
        ("trak", {"proj_dim": None}, "n_models", None),
        ("influence", {"solver": "exact", "damping": 1e-2, "params": "head"}, "seeds", "all"),
    ],
)
def test_mean_combine_is_the_mean_of_the_base_over_members(dropout_run, base, settings, key, everything):
    run, train, queries = dropout_run
    ens = make_attributor("ensemble", base=base, base_settings=settings, kind="independent", combine="mean")
    ens.fit(run, train)
    singles = [make_attributor(base, **settings).fit(_one_seed(run, s), train) for s in run.seeds]
    _close(ens.score(queries), torch.stack([a.score(queries) for a in singles]).mean(0))
    _close(ens.self_influence(), torch.stack([a.self_influence() for a in singles]).mean(0))
    # native = the base's own multi-model fit over the same members
    native = make_attributor(
        "ensemble", base=base, base_settings=settings, kind="independent", combine="native"
    ).fit(run, train)
    whole = make_attributor(base, **settings, **{key: everything}).fit(run, train)
    _close(native.score(queries), whole.score(queries))
    if base != "trak":  # per-model averaging: native == mean (TRAK averages K and Q separately)
        _close(native.score(queries), ens.score(queries))


def test_n_models_uses_the_first_seeds(dropout_run):
    run, train, queries = dropout_run
    ens = make_attributor("ensemble", base="grad_dot", kind="independent", n_models=2).fit(run, train)
    assert [m["run_seed"] for m in ens.members_] == [0, 1]
    base = make_attributor("grad_dot", seeds="all").fit(dataclasses.replace(run, seeds=(0, 1)), train)
    _close(ens.score(queries), base.score(queries))


# ------------------------------------------------------------------------------------------- dropout
def test_dropout_masks_reproducible_by_seed_and_distinct_across_members(dropout_run):
    run = dropout_run[0]
    model = run.model(0)
    a, b = dropout_masks(model, (6,), 123), dropout_masks(model, (6,), 123)
    c = dropout_masks(model, (6,), 124)
    assert list(a) == ["body.3", "body.6"] and a["body.3"].shape == (8,) and a["body.6"].shape == (6,)
    for name in a:
        assert torch.equal(a[name], b[name])
        assert set(a[name].unique().tolist()) <= {0.0, float(torch.tensor(1 / 0.7, dtype=torch.float32))}
    assert any(not torch.equal(a[n], c[n]) for n in a)
    seeds = {member_mask_seed(0, s, j) for s in (0, 1) for j in range(4)}
    assert len(seeds) == 8 and member_mask_seed(0, 1, 2) == member_mask_seed(0, 1, 2)
    many = dropout_masks(model, (6,), 7, p=0.5)
    assert set(many["body.3"].unique().tolist()) <= {0.0, 2.0}


def test_dropout_member_is_fixed_and_shared_by_train_and_query(dropout_run):
    run, train, queries = dropout_run
    members = em.dropout_members(run, (0, 1), n_masks=2, mask_seed=5)
    assert [s.run_seed for s in members.specs] == [0, 0, 1, 1]
    assert len({s.mask_seed for s in members.specs}) == 4
    m0, m0_again = members.model(0), members.model(0)
    assert not any(isinstance(m, torch.nn.Dropout) for m in m0.modules())
    masks = {n: m.mask for n, m in m0.named_modules() if isinstance(m, FixedDropout)}
    masks_again = {n: m.mask for n, m in m0_again.named_modules() if isinstance(m, FixedDropout)}
    early = {n: m.mask for n, m in members.model(0, 0).named_modules() if isinstance(m, FixedDropout)}
    for n in masks:  # same mask every build and at every checkpoint
        assert torch.equal(masks[n], masks_again[n]) and torch.equal(masks[n], early[n])
    m0.train()  # FixedDropout ignores the mode: deterministic outputs
    with torch.no_grad():
        _close(m0(train.inputs), m0(train.inputs))
    # vmap per-example gradients == one-by-one autograd gradients through the same mask
    g = example_grads(m0, train.inputs[:5], train.labels[:5], params="all")
    for i in range(5):
        m0.zero_grad()
        F.cross_entropy(m0.double()(train.inputs[i : i + 1].double()), train.labels[i : i + 1]).backward()
        ref = torch.cat([p.grad.reshape(-1) for p in m0.parameters()])
        _close(g[i], ref)
    # train and query gradients through the same mask: a member's score is its own Grad-Dot
    ens = make_attributor(
        "ensemble", base="grad_dot", base_settings={"params": "all"}, kind="dropout", n_models=2, n_masks=2,
        mask_seed=5, combine="mean",
    ).fit(run, train)  # fmt: skip
    manual = []
    for i in members.seeds:
        mi = members.model(i)
        gq = example_grads(mi, queries.inputs, queries.labels, params="all")
        gt = example_grads(mi, train.inputs, train.labels, params="all")
        manual.append(gq @ gt.T)
    _close(ens.score(queries), torch.stack(manual).mean(0))
    assert not torch.allclose(manual[0], manual[1])  # different members differ
    assert [m["mask_seed"] for m in ens.members_] == [s.mask_seed for s in members.specs]


def test_dropout_needs_dropout_layers(tiny_run):
    run, train, _ = tiny_run
    with pytest.raises(ConfigError, match="dropout layers"):
        make_attributor("ensemble", base="grad_dot", kind="dropout").fit(run, train)


def test_q_only_trak_trick(dropout_run):
    run, train, queries = dropout_run
    ens = make_attributor(
        "ensemble", base="trak", base_settings={"proj_dim": None}, kind="dropout", n_models=2, n_masks=3,
        q_only=True, combine="native",
    ).fit(run, train)  # fmt: skip
    plain = make_attributor("trak", proj_dim=None, n_models=2).fit(run, train)
    members = em.dropout_members(run, (0, 1), 3, 0)
    q = torch.stack(
        [1 - true_class_probability(members.model(i), train.inputs, train.labels) for i in members.seeds]
    ).mean(0)
    _close(ens.score(queries), plain.score(queries) / plain.q_.cpu() * q)
    _close(ens.self_influence(), ens.score(train).diagonal())


# ------------------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def lora_ensemble(dropout_run, tmp_path_factory):
    run, train, _ = dropout_run
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    settings = dict(base="grad_dot", base_settings={"params": "all"}, kind="lora", n_adapters=2, rank=2)
    settings.update(lora_epochs=1, base_seed=1)
    return make_attributor("ensemble", workspace=ws, **settings).fit(run, train), ws, settings


def test_lora_gradients_cover_exactly_lora_and_head(lora_ensemble, dropout_run):
    ens, _, _ = lora_ensemble
    run, train, _ = dropout_run
    member = ens.bases_[0].models_[0]
    subset = ParamSubset.resolve(member, "all")
    assert all("lora_" in n or n.startswith("head.") for n in subset.names)
    widths = (6, *HIDDEN)
    lora = sum(2 * (a + b) for a, b in zip(widths[:-1], widths[1:], strict=True))
    head = HIDDEN[-1] * 3 + 3
    g = example_grads(member, train.inputs[:3], train.labels[:3], params="all")
    assert g.shape == (3, lora + head) == (3, subset.numel)
    # the base weights are the frozen base seed's, the members differ only by their fine-tunes
    base = run.model(1)
    torch.testing.assert_close(member.body[1].base_layer.weight, base.body[1].weight)
    m1 = ens.bases_[0].models_[1]
    assert not torch.equal(member.body[1].lora_A["default"].weight, m1.body[1].lora_A["default"].weight)


def test_lora_members_cached_and_self_influence(lora_ensemble, dropout_run, monkeypatch):
    ens, ws, settings = lora_ensemble
    run, train, queries = dropout_run
    assert len(ws.list(el.LORA_KIND)) == 2
    cost = ens.cost_report()
    assert cost["trained_models"] == 1 and cost["adapters"] == 2 and cost["members"] == 2
    base_bytes = em.state_bytes(run.checkpoints[1][-1].state)
    widths = (6, *HIDDEN)
    adapter = sum(2 * (a + b) for a, b in zip(widths[:-1], widths[1:], strict=True)) + HIDDEN[-1] * 3 + 3
    assert (
        cost["storage_bytes"] == base_bytes + 2 * adapter * 4
    )  # one base + two (LoRA + head) float32 states
    _close(ens.self_influence(), ens.score(train).diagonal())

    def no_training(*args, **kwargs):
        raise AssertionError("a cached LoRA member was retrained")

    monkeypatch.setattr(el, "finetune_lora", no_training)
    again = make_attributor("ensemble", workspace=ws, **settings).fit(run, train)
    _close(again.score(queries), ens.score(queries))


# ------------------------------------------------------------------------------------------- conventions
@pytest.mark.parametrize("kind", ["independent", "dropout"])
def test_self_influence_is_the_diagonal(dropout_run, kind):
    run, train, _ = dropout_run
    for base, settings in [("trak", {"proj_dim": 16}), ("influence", {"solver": "ekfac"})]:
        ens = make_attributor("ensemble", base=base, base_settings=settings, kind=kind, n_masks=2)
        ens.fit(run, train)
        _close(ens.self_influence(), ens.score(train).diagonal())


def test_sign_convention_follows_leave_one_out(digits_case):
    """A one-member ensemble equals its base; positive scores = removal raises the query loss."""
    case = digits_case
    settings = {"solver": "exact", "damping": 0.0}
    ens = make_attributor("ensemble", base="influence", base_settings=settings, kind="independent")
    ens.fit(case.run, case.train)
    scores = ens.score(case.queries)
    _close(scores, make_attributor("influence", **settings).fit(case.run, case.train).score(case.queries))
    base_losses = case.query_losses(case.model)
    top = scores.abs().amax(0).topk(3).indices
    for t in top.tolist():
        change = case.loo_query_losses(t) - base_losses
        assert torch.corrcoef(torch.stack([scores[:, t].double(), change]))[0, 1] > 0.9


def test_settings_checked():
    with pytest.raises(ConfigError, match="base"):
        make_attributor("ensemble", base="nope")
    with pytest.raises(ConfigError, match="seeds"):
        make_attributor("ensemble", base="grad_dot", base_settings={"seeds": "all"})
    with pytest.raises(ConfigError, match="q_only"):
        make_attributor("ensemble", base="grad_dot", kind="dropout", q_only=True)
    with pytest.raises(ConfigError, match="kind"):
        make_attributor("ensemble", kind="bagging")
    with pytest.raises(ConfigError, match="rank"):
        make_attributor("ensemble", kind="lora", rank=0)
    # only the settings of the chosen kind enter the config (and so the cache key)
    cfg = make_attributor("ensemble", kind="independent", rank=8).config()
    assert "rank" not in cfg and cfg["kind"] == "independent"


def test_cost_report_counts_training_and_storage(dropout_run):
    run, train, queries = dropout_run
    naive = make_attributor("ensemble", base="grad_dot", kind="independent").fit(run, train)
    drop = make_attributor("ensemble", base="grad_dot", kind="dropout", n_models=1, n_masks=3).fit(run, train)
    naive.score(queries)
    a, b = naive.cost_report(), drop.cost_report()
    assert a["members"] == b["members"] == 3
    assert a["train_seconds"] == pytest.approx(sum(run.metrics[s]["seconds"] for s in run.seeds))
    assert b["train_seconds"] == pytest.approx(run.metrics[0]["seconds"])
    assert b["storage_bytes"] * 3 == a["storage_bytes"]
    assert a["score_seconds"] > 0 and a["serve_seconds"] >= a["fit_seconds"]
    # head gradients as ghost factors (layer input + bias column, output gradient), float64
    assert a["feature_bytes"] == 3 * 40 * ((HIDDEN[-1] + 1) + 3) * 8


def test_lora_member_ghost_factors_equal_its_gradients(lora_ensemble, dropout_run):
    """peft's LoRA layers are Linear submodules: their ghost factors give the materialised gradients' dots."""
    from tda_explorer.backend.ghost import ghost_factors, ghost_supported

    ens, _, _ = lora_ensemble
    run, train, _ = dropout_run
    member = ens.bases_[0].models_[0]
    assert ghost_supported(member, "all")
    x, y = train.inputs[:7], train.labels[:7]
    g = example_grads(member, x, y, params="all")
    f = ghost_factors(member, x, y, "all")
    torch.testing.assert_close(f.dot(f).double(), (g @ g.T).float().double(), rtol=1e-4, atol=1e-6)


def test_lora_member_written_before_workspace_cached_is_found(dropout_run, tmp_path, monkeypatch):
    """A "lora_members" artifact written by the earlier hand-written block (same key) is loaded as is."""
    from tda_explorer.store import save_tensors

    run, train, _ = dropout_run
    lora = el.LoraSettings(rank=2, epochs=1, base_seed=1)
    targets = el.lora_targets(run.model(1))
    trained = el.finetune_lora(run, train, lora, targets, 7)
    ws = Workspace(tmp_path)
    cfg = el.lora_config(run, train, lora, targets, 7)
    extra = {"checkpoint": trained.checkpoint, "seconds": 1.5, "epoch_losses": trained.epoch_losses}
    with ws.write("lora_members", cfg, extra=extra) as d:
        save_tensors(d, "adapter", trained.state)

    def no_training(*args, **kwargs):
        raise AssertionError("a stored LoRA member was retrained")

    monkeypatch.setattr(el, "finetune_lora", no_training)
    (got,) = el.lora_members(run, train, lora, [7], ws)
    assert (got.seed, got.seconds, got.checkpoint) == (7, 1.5, trained.checkpoint)
    assert got.state.keys() == trained.state.keys()
    assert all(torch.equal(got.state[k], trained.state[k]) for k in trained.state)
    assert [m["key"] for m in ws.list(el.LORA_KIND)] == [ws.key("lora_members", cfg)]
