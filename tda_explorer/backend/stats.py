"""Statistics shared by attributors and evaluations: row-wise Spearman correlation, a bootstrap interval,
the seeded random training subsets of LDS-style ground truths, the rank agreement of two score rows."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import stats

from tda_explorer.errors import ConfigError


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of `a` with the same row of `b`.

    Ranks are taken along the last axis with average ranks for ties (`scipy.stats.rankdata`), then the
    Pearson correlation of the ranks, which is exactly `scipy.stats.spearmanr` of the two rows.

    Args:
        a: float `[n, m]`: n rows of m paired observations.
        b: float `[n, m]`, paired with `a`.

    Returns:
        float64 `[n]` in [-1, 1]; NaN for a row where `a` or `b` is constant (no ranking to correlate).

    Raises:
        ConfigError: the shapes differ or are not 2-D.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ConfigError(
            f"spearman_rows needs two [n, m] arrays of equal shape, got {a.shape} and {b.shape}."
        )
    ra = stats.rankdata(a, axis=1, method="average")
    rb = stats.rankdata(b, axis=1, method="average")
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    num = (ra * rb).sum(axis=1)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = num / den
    rho[den == 0] = np.nan
    return np.clip(rho, -1.0, 1.0)


def bootstrap_mean_ci(
    values: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (`scipy.stats.bootstrap`, seeded).

    Args:
        values: float `[n]`; NaNs must be removed by the caller.
        n_resamples: bootstrap resamples.
        confidence: confidence level in (0, 1).
        seed: seed of the resampling (`numpy.random.default_rng(seed)`).

    Returns:
        `(low, high)`; `(nan, nan)` when fewer than two values are given.
    """
    values = np.asarray(values, dtype=np.float64)
    if not 0.0 < confidence < 1.0 or n_resamples < 1:
        raise ConfigError(
            f"confidence must be in (0, 1) and n_resamples >= 1, got {confidence}, {n_resamples}."
        )
    if values.size < 2:
        return float("nan"), float("nan")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    res = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def random_subset_masks(n_train: int, size: int, subset_seed: int, rows: Iterable[int]) -> np.ndarray:
    """Boolean masks `[len(rows), n_train]`: subset j holds `size` examples drawn without replacement by
    `numpy.random.default_rng([subset_seed, j])` (so subset j does not depend on which others are drawn)."""
    rows = list(rows)
    masks = np.zeros((len(rows), n_train), dtype=bool)
    for r, j in enumerate(rows):
        rng = np.random.default_rng([subset_seed, int(j)])
        masks[r, rng.choice(n_train, size=size, replace=False)] = True
    return masks


def rank_agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> dict[str, float]:
    """Agreement of two attributors' score rows for one query (both `[n_train]`).

    Returns:
        {"spearman": rank correlation, "top_k_overlap": |top-k(a) ∩ top-k(b)| / k,
         "bottom_k_overlap": the same for the k most opposing}.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ConfigError(f"score rows differ in shape: {a.shape} vs {b.shape}.")
    k = min(k, len(a))
    rho = stats.spearmanr(a, b).statistic if len(a) > 1 else float("nan")
    top = len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k
    bottom = len(set(np.argsort(a)[:k]) & set(np.argsort(b)[:k])) / k
    return {"spearman": float(rho), "top_k_overlap": top, "bottom_k_overlap": bottom}
