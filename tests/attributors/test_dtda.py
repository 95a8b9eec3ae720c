"""d-TDA: per-seed deltas equal the bases' scores (with the sign made explicit), margin/prob deltas
against leave-one-out retraining, the distributional statistics, caching, and the CLI."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from tda_explorer.attributors import make_attributor
from tda_explorer.attributors.dtda import (
    DTDAResult,
    compute_dtda,
    helps_sign,
    measurement_values,
    single_seed_view,
    w2_distance,
)
from tda_explorer.cli import main
from tda_explorer.errors import ConfigError, NotFittedError
from tda_explorer.store import Workspace


def per_seed_scores(run, train, queries, method, **settings):
    return torch.stack(
        [
            make_attributor(method, **settings).fit(single_seed_view(run, s), train).score(queries)
            for s in run.seeds
        ]
    )


@pytest.mark.parametrize(
    ("base", "measurement", "method", "sign"),
    [
        ("influence", "loss", "influence", 1),  # loss: delta = +score (removing a helper raises the loss)
        ("source", "loss", "source", 1),
        ("trak", "margin", "trak", -1),  # TRAK's score is the margin gain from z: delta = -score
    ],
)
def test_deltas_are_the_base_scores_with_explicit_sign(tiny_run, base, measurement, method, sign):
    run, train, queries = tiny_run
    settings = {"proj_dim": None} if base == "trak" else {}
    attr = make_attributor("dtda", base=base, measurement=measurement, base_settings=settings)
    with pytest.raises(NotFittedError):
        attr.score(queries)
    attr.fit(run, train)
    result = attr.distribution(queries)
    # the base with d-TDA's resolved settings (its defaults: last-layer gradients for influence / TRAK)
    want = per_seed_scores(run, train, queries, method, **attr.settings["base_settings"])
    assert result.deltas.shape == (2, len(queries), len(train)) and result.measurements.shape == (
        2,
        len(queries),
    )
    torch.testing.assert_close(torch.from_numpy(result.deltas), sign * want, rtol=1e-5, atol=1e-7)
    # score = mean influence in the house sign: the mean of the bases' scores for both signs
    torch.testing.assert_close(attr.score(queries), want.mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.from_numpy(result.mean_influence()), want.mean(0), rtol=1e-5, atol=1e-7)
    self_inf = torch.stack(
        [
            make_attributor(method, **attr.settings["base_settings"])
            .fit(single_seed_view(run, s), train)
            .self_influence()
            for s in run.seeds
        ]
    ).mean(0)
    torch.testing.assert_close(attr.self_influence(), self_inf, rtol=1e-5, atol=1e-7)
    # measurements are those of each seed's final model
    for i, s in enumerate(run.seeds):
        with torch.no_grad():
            logits = run.model(s).double()(queries.inputs.double())
        want_m = measurement_values(logits, queries.labels, measurement).numpy()
        np.testing.assert_allclose(result.measurements[i], want_m, rtol=1e-6)


def loo_margins(case, removed: int) -> torch.Tensor:
    with torch.no_grad():
        return case.loo_model(removed)(case.queries.inputs.double())


@pytest.mark.parametrize("measurement", ["margin", "prob", "loss"])
def test_measurement_deltas_predict_leave_one_out(digits_case, measurement):
    """Exact influence on a converged convex model: delta = change of m on removal, in sign and size."""
    attr = make_attributor(
        "dtda", measurement=measurement, base_settings={"solver": "exact", "damping": 0.0}
    ).fit(digits_case.run, digits_case.train)
    result = attr.distribution(digits_case.queries)
    loss_scores = make_attributor("influence", solver="exact", damping=0.0).fit(
        digits_case.run, digits_case.train
    )
    loss_scores = loss_scores.score(digits_case.queries)
    with torch.no_grad():
        base = measurement_values(
            digits_case.model(digits_case.queries.inputs.double()), digits_case.queries.labels, measurement
        )
    pred, true = [], []
    for q in range(4):
        for t in (int(loss_scores[q].argmax()), int(loss_scores[q].argmin())):  # top proponent / opponent
            after = measurement_values(loo_margins(digits_case, t), digits_case.queries.labels, measurement)
            pred.append(float(result.deltas[0, q, t]))
            true.append(float(after[q] - base[q]))
    pred, true = np.array(pred), np.array(true)
    assert pearsonr(pred, true)[0] > 0.9
    assert (np.sign(pred) == np.sign(true)).all()
    # removing the top (loss) proponent lowers margin / prob and raises the loss
    proponent_shift = np.sign(true[::2])
    assert (proponent_shift == (1 if measurement == "loss" else -1)).all()
    # ... and the house-sign mean influence calls it helpful whatever the measurement
    assert (result.mean_influence()[np.arange(4), loss_scores[:4].argmax(1).numpy()] > 0).all()
    assert helps_sign(measurement) == (1 if measurement == "loss" else -1)


def test_target_class_measures_the_chosen_class(tiny_run):
    run, train, queries = tiny_run
    attr = make_attributor("dtda", measurement="prob", target_class=2, base_settings={"damping": 0.01})
    result = attr.fit(run, train).distribution(queries)
    with torch.no_grad():
        probs = torch.softmax(run.model(run.seeds[1]).double()(queries.inputs.double()), -1)
    np.testing.assert_allclose(result.measurements[1], probs[:, 2].numpy(), rtol=1e-6)
    with pytest.raises(ConfigError):
        make_attributor("dtda", target_class=7).fit(run, train).score(queries)


def test_distribution_statistics():
    x = np.array([[0.0, 1.0], [2.0, 1.0], [1.0, 4.0]])  # [S=3, n_query=2]
    deltas = np.array([[[1.0, -1.0]], [[0.0, 0.0]], [[-3.0, 2.0]]], dtype=np.float32)  # [3, 1, 2] for query 0
    res = DTDAResult(
        x[:, :1], deltas, np.zeros(2, np.float32), "margin", None, "influence", (0, 1, 2), ("q",), ("a", "b")
    )
    y = x[:, :1, None] + deltas.astype(np.float64)  # [3, 1, 2]
    np.testing.assert_allclose(res.mean_shift(), deltas.mean(0))
    np.testing.assert_allclose(res.mean_influence(), -deltas.mean(0))  # margin: higher is better
    np.testing.assert_allclose(res.variance_influence(), y.var(0) - x[:, :1].var(0)[:, None])
    for t in range(2):  # W2 of equal-size samples = best matching over permutations
        xs, ys = x[:, 0], y[:, 0, t]
        best = min(np.sqrt(np.mean((xs - ys[list(p)]) ** 2)) for p in itertools.permutations(range(3)))
        assert res.w2_influence()[0, t] == pytest.approx(best)
    with_z, without = res.pair(0, 1)
    np.testing.assert_allclose(without - with_z, deltas[:, 0, 1])
    assert w2_distance(np.array([1.0, 2.0]), np.array([2.0, 1.0])) == 0


def test_compute_dtda_caches_and_keeps_per_seed_values(tmp_path, tiny_run, monkeypatch):
    run, train, queries = tiny_run
    from tda_explorer.data import DatasetSplits

    splits = DatasetSplits(train=train, val=queries, test=queries, spec={})
    ws = Workspace(tmp_path)
    settings = {"base_settings": {"damping": 0.01}}
    first = compute_dtda(run, splits, settings, "test", ws)
    assert first.deltas.shape == (2, len(queries), len(train)) and first.key
    direct = make_attributor("dtda", **settings).fit(run, train).distribution(queries)
    np.testing.assert_allclose(first.deltas, direct.deltas, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(first.self_influence, direct.self_influence, rtol=1e-6, atol=1e-9)
    from tda_explorer.attributors import dtda

    monkeypatch.setattr(dtda.DTDA, "_fit_seed", lambda *a: pytest.fail("recomputed a cached result"))
    again = dtda.DTDA(**settings).compute(run, splits, "test", ws)  # the public method behind compute_dtda
    assert again.key == first.key and again.train_ids == tuple(train.ids)
    np.testing.assert_array_equal(again.deltas, first.deltas)


def test_bad_settings():
    for bad in (
        {"base": "tracin"},
        {"measurement": "accuracy"},
        {"target_class": 1.5},
        {"base_settings": {"seeds": "all"}},
        {"base": "trak", "base_settings": {"n_models": 1}},
        {"base_settings": {"solver": "newton"}},
    ):
        with pytest.raises(ConfigError):
            make_attributor("dtda", **bad)


def test_cli_attributes_with_source_and_dtda(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    train = ["--workspace", ws, "train", "--dataset", "digits", "--model", "logreg", "--seeds", "2"]
    assert main([*train, "--epochs", "2", "--checkpoints", "2", "--workers", "1"]) == 0
    run_key = capsys.readouterr().out.split()[1]
    for method, sets in (("source", ["segments=2"]), ("dtda", ['base_settings={"damping": 0.01}'])):
        args = ["--workspace", ws, "attribute", "--run", run_key, "--method", method]
        assert main([*args, *[x for s in sets for x in ("--set", s)]]) == 0
        assert "250 queries x 1297 train" in capsys.readouterr().out


def test_settings_hold_the_base_defaults_and_round_trip():
    attr = make_attributor("dtda", base="source", base_settings={"segments": 2})
    base = attr.settings["base_settings"]
    assert base["segments"] == 2 and base["include_start"] is True and "seeds" not in base
    again = make_attributor("dtda", **attr.settings)
    assert again.config() == attr.config()
