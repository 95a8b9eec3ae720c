from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tda_explorer.errors import ConfigError
from tda_explorer.evaluation import bootstrap_mean_ci, spearman_rows


def _reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = []
    for x, y in zip(a, b, strict=True):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            out.append(np.nan)
        else:
            out.append(stats.spearmanr(x, y).statistic)
    return np.asarray(out)


def test_spearman_rows_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 17))
    b = rng.integers(0, 4, size=(30, 17)).astype(np.float64)  # many ties
    a[::3] = np.round(a[::3])  # ties on the other side too
    b[5] = 2.0  # a constant row: no ranking, NaN
    got, want = spearman_rows(a, b), _reference(a, b)
    assert np.isnan(got[5]) and np.isnan(want[5])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_spearman_rows_extremes_and_shape_check():
    x = np.arange(10.0)[None]
    np.testing.assert_allclose(spearman_rows(x, x**3), [1.0])
    np.testing.assert_allclose(spearman_rows(x, -np.exp(x)), [-1.0])
    with pytest.raises(ConfigError):
        spearman_rows(np.zeros((2, 3)), np.zeros((3, 2)))


def test_bootstrap_interval_contains_mean_and_is_seeded():
    values = np.random.default_rng(1).normal(0.3, 0.2, size=50)
    low, high = bootstrap_mean_ci(values, seed=7)
    assert low < values.mean() < high
    assert (low, high) == bootstrap_mean_ci(values, seed=7)
    assert (low, high) != bootstrap_mean_ci(values, seed=8)
    wider = bootstrap_mean_ci(values, confidence=0.99, seed=7)
    assert wider[0] < low and wider[1] > high
    assert np.isnan(bootstrap_mean_ci(values[:1])).all()
    assert bootstrap_mean_ci(np.full(5, 0.25)) == (0.25, 0.25)
