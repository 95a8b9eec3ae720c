"""d-TDA validation by retraining without examples (same seeds), pair selection, and d-TDA pruning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_explorer.attributors.dtda import DTDAResult, compute_dtda, measurement_values
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation.dtda import (
    dtda_pruning,
    load_dtda_validation,
    select_pairs,
    stored_dtda_validation,
    validate_dtda,
)
from tda_explorer.store import Workspace
from tda_explorer.training import train_model, train_run

SEEDS = (0, 1, 2)
SETTINGS = {"measurement": "loss", "base_settings": {"solver": "exact", "damping": 0.0}}


@pytest.fixture(autouse=True)
def one_thread_float64(monkeypatch):
    monkeypatch.setenv("TDA_DTYPE", "float64")
    monkeypatch.setenv("TDA_DEVICE", "cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def setup(tmp_path, tiny, model_config, train_config, recorder):
    ws = Workspace(tmp_path)
    ex = recorder()
    run = train_run(tiny, model_config, train_config, SEEDS, ws, ex)
    ex.jobs.clear()
    return run, ws, ex


def test_select_pairs_balances_signs_and_uses_each_example_once():
    shift = np.array([[5.0, -1.0, 0.5], [4.0, -6.0, 0.1], [0.2, 0.3, -2.0]], dtype=np.float32)
    res = DTDAResult(
        np.zeros((1, 3)),
        shift[None],
        np.zeros(3),
        "loss",
        None,
        "influence",
        (0,),
        ("a", "b", "c"),
        ("x", "y", "z"),
    )
    assert select_pairs(res, 2) == [(1, 1), (0, 0)]  # by |shift|, one of each sign
    # distinct queries and examples: no fourth pair is free, so 3 pairs, not 4
    assert select_pairs(res, 4) == [(1, 1), (0, 0), (2, 2)]
    assert select_pairs(res, 1) == [(0, 0)]  # the single pair raises m (ceil(n/2) positive)


def test_validation_retrains_without_each_example(setup, tiny, model_config, train_config):
    run, ws, ex = setup
    val = validate_dtda(run, tiny, SETTINGS, n_pairs=4, workspace=ws, executor=ex)
    assert len(val.pairs) == 4 and val.seeds == SEEDS
    assert len(ex.jobs) == 4 * len(SEEDS)  # one retraining per removed example and seed
    assert val.with_data.shape == val.predicted.shape == val.retrained.shape == (4, len(SEEDS))
    # the retrained sample is the query's loss after training without the example, with the run's seeds
    q_id, t_id = val.pairs[0]
    q, t = tiny.test.index_of([q_id])[0], tiny.train.index_of([t_id])[0]
    mask = np.ones(len(tiny.train), dtype=bool)
    mask[t] = False
    logits = train_model(
        model_config, train_config, tiny.train, SEEDS[1], mask, {"q": tiny.test}
    ).eval_logits["q"]
    loss = measurement_values(logits, tiny.test.labels, "loss")[q]
    assert val.retrained[0, 1] == pytest.approx(float(loss), rel=1e-6)
    # "with" is the run's own models; predicted = with + delta
    with torch.no_grad():
        own = measurement_values(
            run.model(SEEDS[2]).double()(tiny.test.inputs.double()), tiny.test.labels, "loss"
        )
    assert val.with_data[0, 2] == pytest.approx(float(own[q]), rel=1e-6)
    summary = val.summary()
    assert (
        summary["n_pairs"] == 4
        and np.isfinite([summary["mean_error"], summary["w2"], summary["pearson"]]).all()
    )
    assert len(val.table()) == 4 and set(val.table()[0]) >= {"predicted_shift", "true_shift", "w2"}
    # cached: asking again retrains nothing
    ex.jobs.clear()
    again = validate_dtda(run, tiny, SETTINGS, n_pairs=4, workspace=ws, executor=ex)
    assert not ex.jobs and again.key == val.key
    loaded = load_dtda_validation(val.key, ws)
    assert loaded.pairs == val.pairs and loaded.measurement == "loss"
    stored = stored_dtda_validation(compute_dtda(run, tiny, SETTINGS, "test", ws).config, ws)
    assert stored is not None and stored.key == val.key
    np.testing.assert_array_equal(loaded.predicted, val.predicted)
    np.testing.assert_array_equal(again.retrained, val.retrained)
    # explicit pairs, and another base on them: the per-example retrainings are reused
    one = validate_dtda(run, tiny, SETTINGS, pairs=[val.pairs[0]], workspace=ws, executor=ex)
    np.testing.assert_allclose(one.retrained[0], val.retrained[0])
    assert np.isnan(one.correlation())
    other = validate_dtda(run, tiny, {"base": "source"}, pairs=val.pairs, workspace=ws, executor=ex)
    assert not ex.jobs and other.key != val.key
    np.testing.assert_array_equal(other.retrained, val.retrained)
    assert not np.allclose(other.predicted, val.predicted)


def test_dtda_pruning_compares_averaged_fixed_seed_and_random(setup, tiny):
    run, ws, ex = setup
    result = dtda_pruning(run, tiny, SETTINGS, fractions=(0.0, 0.2), workspace=ws, executor=ex)
    rows = result.table()
    assert [r["fraction"] for r in rows] == [0.0, 0.2] and result.seed_used == SEEDS[0]
    np.testing.assert_array_equal(result.averaged.random_acc, result.fixed_seed.random_acc)
    assert rows[0]["dtda_acc"] == rows[0]["random_acc"] == rows[0]["fixed_seed_acc"]
    assert result.averaged.method_acc.shape == (2, len(SEEDS))
    assert result.averaged.removal_order != result.fixed_seed.removal_order
    with pytest.raises(ConfigError):
        dtda_pruning(run, tiny, SETTINGS, fractions=(1.5,), workspace=ws, executor=ex)
