"""Would a person accept these proponents? Label agreement and diversity of a score matrix's top proponents.

`scores` is `[n_query, n_train]` in the package's sign (positive = the training example helps the query);
a query's proponents are its `k` highest-scoring training examples.

- label agreement@k: the share of a query's top-k proponents whose label equals the query's reference
  label (its *predicted* class by default: "what pushed the model toward this prediction"), averaged over
  queries; the base rate is the share of all training examples with that label (a random proponent).
- diversity@k: the number of distinct training examples among the top-k proponents of all queries, and
  its share of the most possible, `min(n_query * k, n_train)`.
- concentration: the share of all top-k slots taken by the `n_top` most frequent proponents, and the
  Spearman correlation between how often an example is a top-k proponent and a per-example norm (e.g.
  its gradient norm): a high value says a few large-gradient examples dominate every query.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def _check(scores: np.ndarray, k: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError(f"scores must be [n_query, n_train] with n_train >= 1, got shape {scores.shape}.")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in 1..n_train={scores.shape[1]}, got {k}.")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf; proponents are undefined.")
    return scores


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """`[n_query, k]` indices of each row's k highest scores, best first (ties broken by index)."""
    scores = _check(scores, k)
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def label_agreement(
    scores: np.ndarray, train_labels: np.ndarray, query_labels: np.ndarray, k: int = 10
) -> dict:
    """Share of top-k proponents sharing the query's reference label, against a random training example.

    Args:
        scores: `[n_query, n_train]`.
        train_labels: `[n_train]` int labels of the training examples.
        query_labels: `[n_query]` int reference label of each query (its predicted class, or true label).
        k: proponents per query.

    Returns:
        `{"agreement", "base_rate", "lift", "per_query": [n_query]}`: mean agreement@k, the mean share of
        training examples carrying each query's label, and their difference (> 0 = better than random).
    """
    train_labels, query_labels = np.asarray(train_labels), np.asarray(query_labels)
    top = top_k(scores, k)
    if len(train_labels) != scores.shape[1] or len(query_labels) != scores.shape[0]:
        raise ValueError(
            f"{len(train_labels)} train labels / {len(query_labels)} query labels for scores {np.shape(scores)}."
        )
    per_query = (train_labels[top] == query_labels[:, None]).mean(1)
    base = (train_labels[None, :] == query_labels[:, None]).mean(1)
    return {
        "k": k,
        "agreement": float(per_query.mean()),
        "base_rate": float(base.mean()),
        "lift": float(per_query.mean() - base.mean()),
        "per_query": per_query.tolist(),
    }


def proponent_diversity(
    scores: np.ndarray, k: int = 3, norms: np.ndarray | None = None, n_top: int = 10
) -> dict:
    """Distinct training examples among all queries' top-k proponents, and how concentrated they are.

    Args:
        scores: `[n_query, n_train]`.
        k: proponents per query.
        norms: optional `[n_train]` per-example magnitude (e.g. gradient norm) to correlate with frequency.
        n_top: the most frequent proponents whose share of all slots is reported.

    Returns:
        `{"k", "distinct", "possible", "share", "top_share", "norm_spearman"}` (`norm_spearman` None
        without `norms` or when every example is equally frequent).
    """
    top = top_k(scores, k)
    n_query, n_train = np.shape(scores)
    counts = np.bincount(top.ravel(), minlength=n_train)
    possible = min(n_query * k, n_train)
    out = {
        "k": k,
        "distinct": int((counts > 0).sum()),
        "possible": int(possible),
        "share": float((counts > 0).sum() / possible),
        "top_share": float(np.sort(counts)[::-1][:n_top].sum() / top.size),
        "norm_spearman": None,
    }
    if norms is not None:
        norms = np.asarray(norms, dtype=np.float64)
        if norms.shape != (n_train,):
            raise ValueError(f"norms must be [n_train={n_train}], got shape {norms.shape}.")
        if counts.min() != counts.max() and norms.min() != norms.max():
            out["norm_spearman"] = float(spearmanr(counts, norms)[0])
    return out


def summary(
    scores: np.ndarray,
    train_labels: np.ndarray,
    predicted: np.ndarray,
    true_labels: np.ndarray,
    norms: np.ndarray | None = None,
    k_agree: int = 10,
    k_diverse: int = 3,
) -> dict:
    """Agreement with the predicted class and with the true label, and diversity, of one score matrix."""
    pred = label_agreement(scores, train_labels, predicted, k_agree)
    true = label_agreement(scores, train_labels, true_labels, k_agree)
    return {
        "agreement_predicted": {k: v for k, v in pred.items() if k != "per_query"},
        "agreement_true": {k: v for k, v in true.items() if k != "per_query"},
        "diversity": proponent_diversity(scores, k_diverse, norms),
    }
