"""Trust cues on the tiny digits run: quick_check stores the LDS that `lds_score` gives on the same truth,
reuses a larger stored truth, and best_attributor picks the highest measured LDS."""

from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.attributors.scores import compute_scores
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation import LDSConfig, compute_lds_truth, lds_score
from tda_explorer.evaluation.trust import (
    best_attributor,
    measure_stored,
    measured_lds,
    quick_check,
    quick_check_seconds,
    record_lds,
    resolve_score_key,
)
from tda_explorer.store import Workspace
from tda_explorer.training import LocalExecutor, train_run


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny, model_config, train_config):
    ws = Workspace(tmp_path_factory.mktemp("trust"))
    run = train_run(tiny, model_config, train_config, [0], ws, LocalExecutor(1))
    dot = compute_scores(run, tiny, "grad_dot", {"params": "head"}, "test", ws)
    cos = compute_scores(run, tiny, "grad_cos", {"params": "head"}, "test", ws)
    return ws, run, dot, cos


def test_nothing_measured_means_no_best(setup):
    ws, run, _, _ = setup
    fresh = Workspace(ws.root / "empty")
    assert measured_lds(run, fresh) == {}
    assert best_attributor(run, fresh) is None


def test_quick_check_matches_lds_score_and_is_stored(setup, tiny, recorder):
    ws, run, dot, cos = setup
    executor = recorder()
    m = quick_check(run, tiny, "grad_dot", ws, n_subsets=6, executor=executor)
    assert len(executor.jobs) > 0  # it retrained (6 subsets x 1 seed)
    truth = compute_lds_truth(
        tiny.train, tiny.test, run.model_config, run.train_config, LDSConfig(n_subsets=6), ws
    )
    expected = lds_score(dot.scores, truth)
    assert m.score_key == dot.key and m.method == "grad_dot" and m.settings["params"] == "head"
    assert m.mean == pytest.approx(expected.mean) and m.ci_low == pytest.approx(expected.ci_low)
    assert (m.n_subsets, m.mode, m.seeds, m.alpha) == (6, "fresh", (0,), 0.5)
    assert m.label().startswith(f"LDS {expected.mean:.2f} ± ") and m.label().endswith("(6 subsets)")
    assert measured_lds(run, ws)[dot.key] == m
    # The same check again, and one over fewer subsets, reuse the stored truth: no retraining.
    again = recorder()
    assert quick_check(run, tiny, dot.key[:10], ws, n_subsets=6, executor=again) == m
    smaller = quick_check(run, tiny, cos.key, ws, n_subsets=4, executor=again)
    assert again.jobs == [] and smaller.n_subsets == 6 and smaller.truth_key == truth.key
    assert smaller.mean == pytest.approx(lds_score(cos.scores, truth).mean)


def test_best_attributor_is_the_highest_measured(setup, tiny):
    ws, run, dot, cos = setup
    truth = compute_lds_truth(
        tiny.train, tiny.test, run.model_config, run.train_config, LDSConfig(n_subsets=6), ws
    )
    record_lds(run, ws, dot.key, truth)
    record_lds(run, ws, cos.key, truth)
    measures = measured_lds(run, ws)
    best = best_attributor(run, ws)
    assert best.mean == max(m.mean for m in measures.values())
    assert best.score_key in (dot.key, cos.key) and np.isfinite(best.mean)


def test_stored_truth_measures_new_attributors_without_retraining(setup, tiny):
    ws, run, _, _ = setup  # after the quick checks: a 6-subset truth is stored
    new = compute_scores(run, tiny, "grad_dot", {"params": "all"}, "test", ws)
    assert new.key not in measured_lds(run, ws)
    m = measure_stored(run, tiny, ws)[new.key]
    assert m.n_subsets == 6 and m.method == "grad_dot" and np.isfinite(m.mean)


def test_bad_inputs_say_what_exists(setup, tiny):
    ws, run, _, _ = setup
    with pytest.raises(ConfigError, match="grad_dot"):
        resolve_score_key(run, ws, "trak")
    with pytest.raises(ConfigError, match="n_subsets"):
        quick_check(run, tiny, "grad_dot", ws, n_subsets=1)


def test_estimate_scales_with_subsets(setup):
    _, run, _, _ = setup
    t20, t40 = quick_check_seconds(run, 20), quick_check_seconds(run, 40)
    assert t20 is not None and t20 > 0 and t40 == pytest.approx(2 * t20)
