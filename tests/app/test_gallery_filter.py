"""The gallery filter shared by every gallery: label, flag status and score range; filtered top-k."""

from __future__ import annotations

import numpy as np
import torch

from appgallery import GalleryFilter, filtered_top_k
from tda_explorer.data.example_set import ExampleSet


def _examples() -> ExampleSet:
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    return ExampleSet(
        inputs=torch.zeros(6, 2),
        labels=labels,
        ids=tuple(f"e{i}" for i in range(6)),
        class_names=("a", "b", "c"),
        kind="tabular",
        name="toy",
    )


def test_mask_combines_label_flag_and_score():
    es = _examples()
    scores = np.array([0.5, -1.0, 2.0, np.nan, 0.0, 1.0])
    assert GalleryFilter().mask(es, set(), scores).all() and not GalleryFilter().active
    assert GalleryFilter(classes=("b", "c")).mask(es, set()).tolist() == [0, 1, 1, 1, 0, 1]
    assert GalleryFilter(flags="flagged").mask(es, {"e1", "e4"}).tolist() == [0, 1, 0, 0, 1, 0]
    assert GalleryFilter(flags="not flagged").mask(es, {"e1"}).tolist() == [1, 0, 1, 1, 1, 1]
    rng = GalleryFilter(score_range=(0.0, 1.0))
    assert rng.mask(es, set(), scores).tolist() == [1, 0, 0, 0, 1, 1]  # NaN never passes a range
    both = GalleryFilter(classes=("a",), flags="not flagged", score_range=(0.0, 1.0))
    assert both.active and both.mask(es, {"e4"}, scores).tolist() == [1, 0, 0, 0, 0, 0]


def test_filtered_top_k_ranks_only_kept_examples():
    row = np.array([3.0, -2.0, 5.0, 1.0, -4.0, 0.0])
    keep = np.array([1, 1, 0, 1, 1, 1], dtype=bool)
    support, oppose = filtered_top_k(row, keep, 2)
    assert support.tolist() == [0, 3] and oppose.tolist() == [4, 1]
    assert [len(x) for x in filtered_top_k(row, np.zeros(6, bool), 3)] == [0, 0]
