from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.attributors import make_attributor
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation import counterfactual_test
from tda_explorer.store import Workspace
from tda_explorer.training import train_run


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny, model_config, train_config, recorder):
    run = train_run(
        tiny, model_config, train_config, [0], Workspace(tmp_path_factory.mktemp("ws")), recorder()
    )
    queries = tiny.test.subset(np.arange(4))
    scores = make_attributor("grad_dot").fit(run, tiny.train).score(queries)
    return run, queries, scores


def test_counterfactual_on_tiny_data(setup, tiny, recorder):
    run, queries, scores = setup
    ex = recorder()
    res = counterfactual_test(run, tiny.train, queries, scores, ks=(5, 40), random_seed=1, executor=ex)
    n = len(res.query_ids)
    assert n >= 1 and set(res.query_ids) | set(res.skipped_ids) == set(queries.ids)
    assert res.ks == (5, 40) and res.seeds == (0,)
    for arr in (res.top_flipped, res.random_flipped, res.top_loss, res.random_loss):
        assert arr.shape == (n, 2, 1)
    assert res.top_flipped.dtype == bool and res.base_loss.shape == (n, 1)
    assert len(ex.jobs) == 2 * n * 2
    # the first job removes the 5 largest scores of the first tested query
    q = queries.ids.index(res.query_ids[0])
    top5 = np.argsort(-scores[q].numpy(), kind="stable")[:5]
    assert set(np.flatnonzero(~ex.jobs[0].mask)) == set(top5)
    assert [int((~job.mask).sum()) for job in ex.jobs[: 2 * n]] == [5, 40] * n
    # removing strong proponents raises the query loss more than removing random examples
    rows = res.table()
    assert [r["k"] for r in rows] == [5, 40] and rows[1]["n_trials"] == n
    assert rows[1]["top_loss_increase"] > rows[1]["random_loss_increase"]


def test_random_removal_is_seeded(setup, tiny, recorder):
    run, queries, scores = setup

    def random_masks(seed):
        ex = recorder()
        counterfactual_test(run, tiny.train, queries, scores, ks=(3,), random_seed=seed, executor=ex)
        return [tuple(np.flatnonzero(~job.mask)) for job in ex.jobs[len(ex.jobs) // 2 :]]

    first = random_masks(2)
    assert first == random_masks(2) and first != random_masks(3)


def test_bad_k_raises(setup, tiny):
    run, queries, scores = setup
    with pytest.raises(ConfigError, match="ks"):
        counterfactual_test(run, tiny.train, queries, scores, ks=(len(tiny.train),))
    with pytest.raises(ConfigError, match="shape"):
        counterfactual_test(run, tiny.train, queries, scores[:, :-1], ks=(3,))
