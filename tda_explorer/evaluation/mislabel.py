"""Mislabel detection: rank training examples by a suspicion score and see how many flipped labels lead.

A mislabel score is `[n_train]`, higher = more suspicious (e.g. self-influence, or the baseline
`training_loss_scores`: each example's own loss at the final model). Reported: ROC-AUC of the score
against the flipped/clean truth (`sklearn.metrics.roc_auc_score`), and the fraction of the flips found
when inspecting the top 10% / 20% of the ranking (ties at the cut-off share the remaining places
evenly, i.e. the expected recall under a random order of tied examples).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from tda_explorer.attributors.base import Attributor
from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.data.noise import inject_label_noise
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation._common import as_float64, check_fractions, check_seeds, cross_entropy
from tda_explorer.models import ModelConfig, prepare_inputs
from tda_explorer.store import Workspace
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.executor import Executor
from tda_explorer.training.runs import TrainedRun, train_run
from tda_explorer.training.trainer import Progress, predict_logits

DEFAULT_INSPECT = (0.1, 0.2)


@dataclass(frozen=True)
class MislabelResult:
    """How well one score finds flipped labels.

    Attributes:
        auc: ROC-AUC of the score for "flipped" (0.5 = chance, 1 = every flip ranked above every clean one).
        recall_at: `{fraction inspected: fraction of all flips found in the top that fraction}`.
        n_flipped: number of flipped examples.
        n_train: number of training examples.
    """

    auc: float
    recall_at: dict[float, float]
    n_flipped: int
    n_train: int

    def to_dict(self) -> dict:
        """JSON-able form (`recall_at` keys as strings, e.g. "0.1")."""
        return {
            "auc": self.auc,
            "recall_at": {str(k): v for k, v in self.recall_at.items()},
            "n_flipped": self.n_flipped,
            "n_train": self.n_train,
        }


def _flip_mask(
    flipped: Sequence[str] | np.ndarray | torch.Tensor, n: int, train_ids: Sequence[str] | None
) -> np.ndarray:
    if isinstance(flipped, torch.Tensor):
        flipped = flipped.cpu().numpy()
    arr = np.asarray(flipped)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ConfigError(
                f"flipped mask has shape {list(arr.shape)}, expected [{n}] (one per training example)."
            )
        return arr
    if train_ids is None:
        raise ConfigError(
            "flipped is given as ids; pass train_ids (the ids of the scored examples, in order)."
        )
    if len(train_ids) != n:
        raise ConfigError(f"{len(train_ids)} train_ids for {n} scores; they must match one to one.")
    lookup = {k: i for i, k in enumerate(train_ids)}
    unknown = [k for k in flipped if k not in lookup]
    if unknown:
        raise ConfigError(f"flipped id {unknown[0]!r} is not among the train ids ({len(unknown)} unknown).")
    mask = np.zeros(n, dtype=bool)
    mask[[lookup[k] for k in flipped]] = True
    return mask


def recall_at_fraction(scores: np.ndarray, positives: np.ndarray, fraction: float) -> float:
    """Fraction of positives among the top `ceil(fraction * n)` scores (expected value over tie orders).

    Args:
        scores: float `[n]`, higher = inspected first.
        positives: bool `[n]`.
        fraction: share of the examples inspected, in [0, 1).

    Returns:
        Found positives / all positives (NaN if there is no positive).
    """
    n, total = len(scores), int(positives.sum())
    if total == 0:
        return float("nan")
    k = math.ceil(fraction * n - 1e-9)
    if k == 0:
        return 0.0
    cut = np.sort(scores)[::-1][k - 1]
    above = scores > cut
    tied = scores == cut
    share = (k - int(above.sum())) / int(tied.sum())
    found = positives[above].sum() + share * positives[tied].sum()
    return float(found / total)


def mislabel_metrics(
    scores: torch.Tensor | np.ndarray,
    flipped: Sequence[str] | np.ndarray | torch.Tensor,
    train_ids: Sequence[str] | None = None,
    inspect: Sequence[float] = DEFAULT_INSPECT,
) -> MislabelResult:
    """ROC-AUC and top-fraction recall of a mislabel score.

    Args:
        scores: `[n_train]`, higher = more suspicious (e.g. self-influence).
        flipped: bool `[n_train]` (True = label was flipped) or the flipped ids (then `train_ids` is needed).
        train_ids: ids of the scored examples, in score order.
        inspect: fractions of the ranking inspected (default 10% and 20%).

    Returns:
        MislabelResult. AUC is NaN if all or none of the examples are flipped.
    """
    s = as_float64(scores, "mislabel scores", (None,))
    positives = _flip_mask(flipped, len(s), train_ids)
    fractions = check_fractions(inspect, "inspect fractions")
    n_pos = int(positives.sum())
    auc = float(roc_auc_score(positives, s)) if 0 < n_pos < len(s) else float("nan")
    recall = {f: recall_at_fraction(s, positives, f) for f in fractions}
    return MislabelResult(auc, recall, n_pos, len(s))


@torch.no_grad()
def training_loss_scores(
    run: TrainedRun, train: ExampleSet, seeds: Sequence[int] | None = None
) -> torch.Tensor:
    """Baseline mislabel score: each training example's own cross-entropy at the final model(s).

    Args:
        run: the trained run.
        train: the training set (with the labels the run was trained on).
        seeds: seeds whose final models are averaged (default: all of the run's seeds).

    Returns:
        float32 `[n_train]`, higher = more suspicious.
    """
    seeds = run.seeds if seeds is None else check_seeds(seeds)
    losses = []
    for s in seeds:
        model = run.model(s)
        losses.append(cross_entropy(predict_logits(model, prepare_inputs(model, train.inputs)), train.labels))
    return torch.stack(losses).mean(0).float()


@dataclass(frozen=True)
class MislabelReport:
    """Result of `mislabel_experiment`.

    Attributes:
        method: the attributor's name.
        result: metrics of the attributor's score.
        baseline: metrics of the training-loss baseline.
        flipped_ids: ids whose label was flipped (seeded, recorded).
        run_key: key of the run trained on the noisy labels.
        noise: `{"fraction": ..., "seed": ...}`.
        scores: float32 `[n_train]`, the attributor's mislabel score (higher = more suspicious).
    """

    method: str
    result: MislabelResult
    baseline: MislabelResult
    flipped_ids: tuple[str, ...]
    run_key: str
    noise: dict
    scores: torch.Tensor = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-able summary (without the scores)."""
        return {
            "method": self.method,
            "result": self.result.to_dict(),
            "baseline": self.baseline.to_dict(),
            "n_flipped": len(self.flipped_ids),
            "run_key": self.run_key,
            "noise": dict(self.noise),
        }


def mislabel_experiment(
    splits: DatasetSplits,
    attributor: Attributor,
    model_config: ModelConfig,
    train_config: TrainConfig,
    fraction: float = 0.1,
    noise_seed: int = 0,
    seeds: Sequence[int] = (0,),
    workspace: Workspace | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
    score_fn: Callable[[Attributor], torch.Tensor] | None = None,
    inspect: Sequence[float] = DEFAULT_INSPECT,
) -> MislabelReport:
    """Flip a seeded fraction of labels, train on them, fit the attributor and score mislabel detection.

    Args:
        splits: clean dataset splits.
        attributor: an unfitted attributor; it is fitted on the noisy run.
        model_config, train_config, seeds: the run trained on the noisy labels (cached in the workspace).
        fraction, noise_seed: label noise (see `inject_label_noise`).
        score_fn: the mislabel score from the fitted attributor, `[n_train]` higher = more suspicious
            (default: `attributor.self_influence()`).
        inspect: fractions of the ranking inspected for the recall figures.

    Returns:
        MislabelReport with the attributor's and the training-loss baseline's metrics.
    """
    noisy = inject_label_noise(splits, fraction, noise_seed)
    run = train_run(noisy, model_config, train_config, check_seeds(seeds), workspace, executor, progress)
    attributor.fit(run, noisy.train)
    scores = (score_fn or (lambda a: a.self_influence()))(attributor)
    scores = torch.as_tensor(scores).detach().float().cpu()
    ids = noisy.train.ids
    return MislabelReport(
        method=attributor.name,
        result=mislabel_metrics(scores, noisy.flipped_ids, ids, inspect),
        baseline=mislabel_metrics(training_loss_scores(run, noisy.train), noisy.flipped_ids, ids, inspect),
        flipped_ids=noisy.flipped_ids,
        run_key=run.key,
        noise={"fraction": float(fraction), "seed": int(noise_seed)},
        scores=scores,
    )


def roc_points(scores: np.ndarray, flipped: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """ROC curve of a mislabel score (higher = more suspicious) against a boolean flipped mask `[n]`.

    Returns:
        (false positive rates, true positive rates, AUC), from `sklearn.metrics.roc_curve`.
    """
    from sklearn.metrics import roc_curve

    flipped = np.asarray(flipped, dtype=bool)
    if flipped.all() or not flipped.any():
        raise ConfigError("a ROC curve needs both flipped and clean examples.")
    fpr, tpr, _ = roc_curve(flipped, np.asarray(scores, dtype=np.float64))
    return fpr, tpr, float(roc_auc_score(flipped, np.asarray(scores, dtype=np.float64)))
