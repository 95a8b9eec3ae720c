"""Usefulness of training examples to a set of queries, and the removal choices made from it (numpy only).

`usefulness(scores)` is the mean score of each training example over the queries (`[n_train]`, higher =
more useful); `harm(scores)` keeps only the negative part (the predicted harm to the queries an example
hurts, `<= 0`); `removal_mask` picks the least useful examples, `curve_fractions` the removed fractions of a
pruning curve.
"""

from __future__ import annotations

import numpy as np

from tda_explorer.errors import ConfigError

#: The pruning rules of `evaluation.pruning.rule_usefulness` (described there).
PRUNING_RULES = ("sum", "class_balanced", "normalised", "harm", "harm_loss", "harm_mislabel")
#: The round-by-round forms of the rules that rank within each class (`evaluation.iterative_pruning`): remove
#: a small share, retrain on the kept set, score again, repeat.
ITERATIVE_RULES = (
    "iterative_class_balanced",
    "iterative_harm",
    "iterative_harm_loss",
    "iterative_harm_mislabel",
)
#: The rule the app and the CLI start from: among the rules that need nothing but the run (no out-of-fold
#: retraining, no rounds), the highest mean test accuracy over the attributors and removed fractions in
#: `benchmarks/pruning.py` on the clean and both 10%-flipped mnist5k logistic-regression runs (RESULTS.md);
#: "harm_mislabel" / the iterative rules are within noise of it there and cost retrainings.
DEFAULT_PRUNING_RULE = "harm_loss"


def usefulness(scores: np.ndarray) -> np.ndarray:
    """Per-training-example usefulness `[n_train]`: the mean score over the queries (positive = helps them).

    The one definition of usefulness in the package: the app's and the CLI's pruning choices, the review
    queue and the pruning curves (`evaluation.pruning.usefulness_from_scores`) all rank by it. The mean,
    not the sum, so a threshold means the same whatever the number of queries. With influence-type scores
    this is the predicted decrease of the mean query loss per example kept; the most harmful examples have
    the most negative usefulness.
    """
    return np.asarray(scores, dtype=np.float64).mean(axis=0)


def harm(scores: np.ndarray) -> np.ndarray:
    """Per-training-example harm `[n_train]`, `<= 0`: the mean over the queries of `min(score, 0)`.

    The negative part of `usefulness`: the predicted damage to the queries an example hurts, with its help
    to the others left out, so a training example cannot buy its damage back by helping elsewhere. A
    mislabelled example hurts the queries of its true class and helps few; most clean examples hurt
    little. Ranking by it (most negative first) is the pruning rule "harm".
    """
    return np.minimum(np.asarray(scores, dtype=np.float64), 0.0).mean(axis=0)


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
