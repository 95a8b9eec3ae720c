"""Pure functions behind the app's selections: chart events to example ids, pruning choices, agreement.

Kept free of Streamlit and plotly objects so they are tested directly (AppTest cannot click charts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import spearmanr

from tda_explorer.errors import ConfigError


def ids_from_selection(event: Mapping | None) -> list[str]:
    """Example ids of the points in a plotly selection event (as `st.plotly_chart(on_select=...)` returns).

    Every trace carries the example id as the first entry of `custom_data`, so the answer never depends
    on trace or point indices. Returns ids in selection order without duplicates; [] for no selection.
    """
    if not event:
        return []
    selection = event.get("selection", event) if isinstance(event, Mapping) else {}
    points = selection.get("points", []) if isinstance(selection, Mapping) else []
    out: list[str] = []
    for p in points:
        custom = p.get("customdata", p.get("custom_data"))
        if custom is None:
            continue
        example_id = custom[0] if isinstance(custom, Sequence) and not isinstance(custom, str) else custom
        if str(example_id) not in out:
            out.append(str(example_id))
    return out


def usefulness(scores: np.ndarray) -> np.ndarray:
    """Per-training-example usefulness `[n_train]`: the mean score over the queries (positive = helps them).

    With influence-type scores this is the predicted decrease of the mean query loss per example kept;
    the most harmful examples have the most negative usefulness.
    """
    return np.asarray(scores, dtype=np.float64).mean(axis=0)


def removal_mask(
    useful: np.ndarray, fraction: float | None = None, threshold: float | None = None
) -> np.ndarray:
    """Boolean `[n_train]`, True for the examples to remove: the `fraction` least useful ones, or every
    example whose usefulness is below `threshold`. Exactly one of the two must be given; ties broken by
    position (stable sort) so the choice is deterministic."""
    useful = np.asarray(useful, dtype=np.float64)
    if (fraction is None) == (threshold is None):
        raise ConfigError(
            "give exactly one of fraction (e.g. 0.1) or threshold (a score) to choose removals."
        )
    mask = np.zeros(len(useful), dtype=bool)
    if fraction is not None:
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f"fraction to remove must be in [0, 1), got {fraction}.")
        k = int(round(fraction * len(useful)))
        mask[np.argsort(useful, kind="stable")[:k]] = True
    else:
        mask = useful < float(threshold)
    return mask


def curve_fractions(largest: float, step: float = 0.1) -> tuple[float, ...]:
    """Removed fractions `0, step, 2*step, ..., largest` (rounded to 1e-6) for a pruning curve."""
    if not 0.0 < step <= largest < 1.0:
        raise ConfigError(f"need 0 < step <= largest < 1, got step={step}, largest={largest}.")
    n = int(round(largest / step))
    return tuple(round(min(i * step, largest), 6) for i in range(n + 1))


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
    rho = spearmanr(a, b).statistic if len(a) > 1 else float("nan")
    top = len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k
    bottom = len(set(np.argsort(a)[:k]) & set(np.argsort(b)[:k])) / k
    return {"spearman": float(rho), "top_k_overlap": top, "bottom_k_overlap": bottom}
