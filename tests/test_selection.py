"""Pure selection logic behind the app: chart events to ids, pruning choices, rank agreement."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from tda_explorer.backend.stats import rank_agreement
from tda_explorer.backend.usefulness import curve_fractions, removal_mask, usefulness
from tda_explorer.errors import ConfigError
from tda_explorer.selection import ids_from_selection


def test_ids_come_from_custom_data_not_indices():
    event = {
        "selection": {
            "points": [
                {"curve_number": 3, "point_index": 0, "customdata": ["mnist5k-00042"]},
                {"curve_number": 0, "point_index": 7, "customdata": ["mnist5k-00007", "extra"]},
                {"curve_number": 1, "point_index": 2, "customdata": ["mnist5k-00042"]},  # duplicate
                {"curve_number": 1, "point_index": 9},  # no custom data: ignored
            ]
        }
    }
    assert ids_from_selection(event) == ["mnist5k-00042", "mnist5k-00007"]
    assert ids_from_selection(None) == [] and ids_from_selection({"selection": {"points": []}}) == []


def test_removal_by_fraction_and_threshold():
    useful = np.array([0.5, -2.0, 0.1, -0.3, 3.0, -0.3])
    mask = removal_mask(useful, fraction=0.5)
    assert mask.tolist() == [False, True, False, True, False, True]
    assert removal_mask(useful, threshold=0.0).tolist() == [False, True, False, True, False, True]
    assert not removal_mask(useful, fraction=0.0).any()
    with pytest.raises(ConfigError):
        removal_mask(useful)
    with pytest.raises(ConfigError):
        removal_mask(useful, fraction=1.0)


def test_usefulness_is_mean_over_queries():
    scores = np.array([[1.0, -1.0, 0.0], [3.0, 1.0, -2.0]])
    assert usefulness(scores).tolist() == [2.0, 0.0, -1.0]


def test_rank_agreement_matches_scipy_and_overlaps():
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    b = a + rng.normal(scale=0.5, size=50)
    agree = rank_agreement(a, b, k=5)
    assert agree["spearman"] == pytest.approx(spearmanr(a, b).statistic)
    top_a, top_b = set(np.argsort(-a)[:5]), set(np.argsort(-b)[:5])
    assert agree["top_k_overlap"] == len(top_a & top_b) / 5
    assert rank_agreement(a, a, k=5) == pytest.approx(
        {"spearman": 1.0, "top_k_overlap": 1.0, "bottom_k_overlap": 1.0}
    )


def test_curve_fractions_start_at_zero_and_end_at_the_largest():

    assert curve_fractions(0.5) == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    assert curve_fractions(0.3, step=0.15) == (0.0, 0.15, 0.3)
    with pytest.raises(ConfigError):
        curve_fractions(1.0)
