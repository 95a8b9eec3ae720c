"""Scores measured at the predicted class: the same attributor with the query labels set to predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tda_explorer.attributors.base import make_attributor
from tda_explorer.attributors.measurement import PREDICTED_KIND, scores_for_measurement
from tda_explorer.attributors.scores import ScoreResult
from tda_explorer.data import DatasetSplits
from tda_explorer.errors import ConfigError
from tda_explorer.store import Workspace


def test_predicted_class_scores_recompute_only_the_mistakes(tiny_run, tmp_path):
    run, train, queries = tiny_run
    splits = DatasetSplits(train=train, val=queries, test=queries, spec={"name": "tiny"})
    attr = make_attributor("grad_dot").fit(run, train)
    base = ScoreResult(
        method="grad_dot",
        config={"run": run.key, "method": {"method": "grad_dot", **attr.settings}, "queries": "test"},
        scores=attr.score(queries).numpy().astype(np.float32),
        self_influence=attr.self_influence().numpy().astype(np.float32),
        query_ids=list(queries.ids),
        train_ids=list(train.ids),
        seconds=0.1,
        key="base0",
    )
    predicted = queries.labels.numpy().copy()
    wrong = [1, 4]
    predicted[wrong] = (predicted[wrong] + 1) % 3
    ws = Workspace(tmp_path)
    assert scores_for_measurement(run, splits, base, "true_label", predicted, ws) is base
    got = scores_for_measurement(run, splits, base, "predicted", predicted, ws)
    want = attr.score(queries.with_labels(torch.as_tensor(predicted))).numpy()
    np.testing.assert_allclose(got.scores, want, rtol=1e-5, atol=1e-7)
    right = np.setdiff1d(np.arange(len(queries)), wrong)
    np.testing.assert_array_equal(got.scores[right], base.scores[right])  # correct predictions: same rows
    assert not np.allclose(got.scores[wrong], base.scores[wrong])
    assert len(ws.list(PREDICTED_KIND)) == 1
    again = scores_for_measurement(run, splits, base, "predicted", predicted, ws)  # cached
    assert again.key == got.key and len(ws.list(PREDICTED_KIND)) == 1
    with pytest.raises(ConfigError, match="measurement"):
        scores_for_measurement(run, splits, base, "margin", predicted, ws)


def test_compute_test_scores_fits_once_for_both_measurements(tiny_run, tmp_path, monkeypatch):
    from tda_explorer.attributors import measurement
    from tda_explorer.attributors.grad_dot import GradDot

    run, train, queries = tiny_run
    splits = DatasetSplits(train=train, val=queries, test=queries, spec={"name": "tiny"})
    fits = []
    original = GradDot.fit
    monkeypatch.setattr(GradDot, "fit", lambda self, *a: fits.append(1) or original(self, *a))
    base, pred = measurement.compute_test_scores(run, splits, "grad_dot", {}, Workspace(tmp_path))
    assert len(fits) == 1
    predicted = measurement.predicted_classes(run, splits)
    want = make_attributor("grad_dot").fit(run, train).score(queries.with_labels(torch.as_tensor(predicted)))
    np.testing.assert_allclose(pred.scores, want.numpy(), rtol=1e-5, atol=1e-7)
    assert base.key != pred.key


def test_predicted_scores_written_before_workspace_cached_are_found(tiny_run, tmp_path):
    """An artifact written by the hand-written cache block (same kind, same config) is reused as is."""
    from tda_explorer.attributors.measurement import _config
    from tda_explorer.store import save_array

    run, train, queries = tiny_run
    splits = DatasetSplits(train=train, val=queries, test=queries, spec={"name": "tiny"})
    base = ScoreResult(
        method="grad_dot",
        config={"run": run.key, "method": {"method": "grad_dot"}, "queries": "test"},
        scores=np.zeros((len(queries), len(train)), np.float32),
        self_influence=np.zeros(len(train), np.float32),
        query_ids=list(queries.ids),
        train_ids=list(train.ids),
        seconds=0.1,
        key="base0",
    )
    predicted = (queries.labels.numpy() + 1) % 3  # every query "wrong": a recompute would need a fit
    ws = Workspace(tmp_path)
    sentinel = np.arange(base.scores.size, dtype=np.float32).reshape(base.scores.shape)
    cfg = _config(base, predicted)
    with ws.write(PREDICTED_KIND, cfg, extra={"n_recomputed": len(predicted)}) as d:
        save_array(d, "scores", sentinel)

    class NoFit:
        def score(self, _queries):
            raise AssertionError("recomputed instead of reusing the stored artifact")

    got = scores_for_measurement(run, splits, base, "predicted", predicted, ws, attributor=NoFit())
    assert got.key == ws.key(PREDICTED_KIND, cfg) == ws.list(PREDICTED_KIND)[0]["key"]
    np.testing.assert_array_equal(got.scores, sentinel)
