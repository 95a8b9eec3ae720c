"""Mislabel scores beyond self-influence: out-of-fold probabilities, cleanlab's baseline, and a combination.

- `out_of_fold_probs`: K-fold cross-validation through the package's executor: the run's recipe is
  retrained K times, each time without one fold (folds seeded, `default_rng(seed)` permutation), and the
  held-out fold's class probabilities are kept, `[N, C]`. This is what cleanlab (confident learning)
  expects: probabilities of a model that never saw the example.
- `cleanlab_scores`: cleanlab's `rank.get_label_quality_scores` on those probabilities, turned into a
  suspicion score (`1 - quality`, higher = more suspicious). cleanlab is an optional dependency (a
  benchmark/test extra: `pip install cleanlab`), imported only here.
- `mislabel_score`: the documented combination, the mean of the normalised ranks (0 = least suspicious,
  1 = most) of the signals given: by default each example's own training loss averaged over the run's
  seeds, its out-of-fold self-confidence score `1 - p_oof(y)`, and an attributor's self-influence.
  Ranks make the signals commensurable (losses, probabilities and influences have unrelated scales) and
  averaging them keeps an example that one signal misses but two others flag. Measured in
  `benchmarks/mislabel.py` (digits, 10% flips).

Shapes: probabilities `[N, C]`, labels `int64 [N]`, scores `[N]` float (higher = more suspicious).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.training.executor import Executor
from tda_explorer.training.runs import TrainedRun, retrain_on_subsets
from tda_explorer.training.trainer import Progress


def fold_masks(n: int, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Boolean `[n_folds, n]`: row f marks the examples *held out* in fold f (a seeded partition)."""
    if not 2 <= n_folds <= n:
        raise ConfigError(f"n_folds must be in [2, {n}], got {n_folds}.")
    order = np.random.default_rng(seed).permutation(n)
    masks = np.zeros((n_folds, n), dtype=bool)
    for f, part in enumerate(np.array_split(order, n_folds)):
        masks[f, part] = True
    return masks


def out_of_fold_probs(
    run: TrainedRun,
    train: ExampleSet,
    n_folds: int = 5,
    seed: int = 0,
    train_seed: int = 0,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Out-of-fold class probabilities `[N, C]` float64 by K-fold retraining with the run's recipe.

    Args:
        run: the run whose recipe (`train_config`, or an imported run's `train_fn`) is retrained.
        train: the training set (noisy labels included, as the run was trained).
        n_folds: K; each fold is held out once (K retrainings, each on (K-1)/K of the examples).
        seed: seed of the fold partition; train_seed: the retraining seed.
        executor / progress: how the retrainings run (default: local processes).
    """
    held_out = fold_masks(len(train), n_folds, seed)
    logits = retrain_on_subsets(
        run.model_config, run.require_recipe("out-of-fold probabilities"), train, ~held_out, (train_seed,),
        train, executor, progress,
    )  # fmt: skip
    probs = torch.softmax(logits[:, 0].double(), dim=-1).numpy()  # [K, N, C]
    out = np.empty(probs.shape[1:], dtype=np.float64)
    for f in range(n_folds):
        out[held_out[f]] = probs[f, held_out[f]]
    return out


def cleanlab_scores(probs: np.ndarray, labels: np.ndarray | torch.Tensor, method: str = "self_confidence"):
    """cleanlab's label-quality scores as a suspicion score: `1 - get_label_quality_scores(...)` `[N]`.

    Args:
        probs: out-of-fold probabilities `[N, C]`; labels: the given labels `[N]`.
        method: cleanlab's scoring method ("self_confidence", "normalized_margin", "confidence_weighted_entropy").
    """
    try:
        from cleanlab.rank import get_label_quality_scores
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("cleanlab is not installed: pip install cleanlab (a benchmark extra).") from e
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    quality = get_label_quality_scores(labels, np.asarray(probs, dtype=np.float64), method=method)
    return 1.0 - np.asarray(quality, dtype=np.float64)


def normalised_rank(score: np.ndarray | torch.Tensor) -> np.ndarray:
    """Average ranks scaled to [0, 1] (`[N]`; 1 = the largest score)."""
    s = np.asarray(score.detach().cpu() if isinstance(score, torch.Tensor) else score, dtype=np.float64)
    return (rankdata(s) - 1) / max(1, len(s) - 1)


def mislabel_score(signals: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
    """The combined mislabel score `[N]`: mean of the signals' normalised ranks (see the module docstring).

    Args:
        signals: `[N]` scores, each higher = more suspicious (e.g. `training_loss_scores(run, train)`,
            `1 - oof_probs[range(N), labels]`, `attributor.self_influence()`).
    """
    if not signals:
        raise ConfigError("mislabel_score needs at least one signal.")
    ranks = [normalised_rank(s) for s in signals]
    if len({len(r) for r in ranks}) != 1:
        raise ConfigError(f"signals have different lengths {[len(r) for r in ranks]}.")
    return np.mean(ranks, axis=0)
