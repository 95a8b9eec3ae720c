"""The review computations behind the Mislabels and Pruning pages (and the CLI's mislabels / prune)."""

from __future__ import annotations

import numpy as np
import torch

from tda_explorer.data.example_set import ExampleSet
from tda_explorer.evaluation.review import mislabel_ranking, prune_table
from tda_explorer.store.flags import FlagRecord


def _train() -> ExampleSet:
    return ExampleSet(
        ids=("a", "b", "c", "d"),
        inputs=torch.zeros(4, 2),
        labels=torch.tensor([0, 1, 0, 1]),
        class_names=("cat", "dog"),
        kind="tabular",
    )


def _flag(example_id: str) -> FlagRecord:
    return FlagRecord("run", example_id, True, "dog", "note", "2026-01-01T00:00:00+00:00")


def test_mislabel_ranking_orders_by_score_and_marks_flags_and_flips():
    rows = mislabel_ranking(
        np.array([0.1, 0.9, 0.9, 0.5]), _train(), {"b": _flag("b")}, top=3, flipped_ids=("c",)
    )
    assert [r["id"] for r in rows] == ["b", "c", "d"]  # ties keep dataset order
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["flagged"] and rows[0]["suggested_label"] == "dog" and not rows[1]["flagged"]
    assert [r["flipped"] for r in rows] == [False, True, False]
    assert rows[1]["class_name"] == "cat"


def test_mislabel_ranking_can_hide_flagged_examples():
    rows = mislabel_ranking(
        np.array([0.1, 0.9, 0.8, 0.5]), _train(), {"b": _flag("b")}, top=2, hide_flagged=True
    )
    assert [r["id"] for r in rows] == ["c", "d"] and [r["rank"] for r in rows] == [1, 2]
    assert "flipped" not in rows[0]


def test_prune_table_removes_the_least_useful_by_mean_score():
    scores = np.array([[1.0, -2.0, 0.5, 3.0], [1.0, 0.0, 0.5, -1.0]])  # usefulness = column means
    table = prune_table(scores, _train(), {"d": _flag("d")}, fraction=0.25)
    assert table["status"].tolist() == ["kept", "removed", "kept", "kept"]
    np.testing.assert_allclose(table["score"], [1.0, -1.0, 0.5, 1.0])
    assert table["flagged"].tolist() == [False, False, False, True]
    by_threshold = prune_table(scores, _train(), fraction=None, threshold=0.75)
    assert by_threshold["status"].tolist() == ["kept", "removed", "removed", "kept"]


def test_prune_table_with_the_class_balanced_rule_takes_from_every_class():
    train = _train()
    labels = train.labels.numpy()
    scores = np.array([[-5.0, -4.0, 1.0, 2.0]])
    table = prune_table(scores, train, fraction=0.5, rule="class_balanced")
    removed = table["status"].to_numpy() == "removed"
    assert removed.sum() == 2 and len(set(labels[removed])) == len(set(labels))
