"""Counterfactual (remove-and-retrain) test: does removing a query's top-k proponents flip its prediction?

For each query that every final model of the run classifies correctly, and each k: retrain (same seeds as
the run, so the full-data model is the run's own) without the k training examples with the largest
scores for that query (its proponents; positive score = helps), and, as the baseline, without k random
examples (nested per query: `default_rng([random_seed, query position]).permutation(N)[:k]`). A flip is a
retrained prediction different from the query's label. A good method flips far more than random removal.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation._common import as_float64, check_int, check_seeds, cross_entropy
from tda_explorer.models import prepare_inputs
from tda_explorer.training.executor import Executor
from tda_explorer.training.runs import TrainedRun, retrain_on_subsets
from tda_explorer.training.trainer import Progress, predict_logits


@dataclass(frozen=True, eq=False)
class CounterfactualResult:
    """Flips after removing top-k proponents vs k random examples.

    Attributes:
        query_ids: the tested queries (correctly classified by every seed's full-data model), `[n]`.
        skipped_ids: queries left out because some seed's full-data model misclassifies them.
        ks: numbers of removed examples, `[K]`.
        seeds: retraining seeds, `[R]`.
        top_flipped, random_flipped: bool `[n, K, R]`, prediction != label after the removal.
        top_loss, random_loss: float64 `[n, K, R]` query cross-entropy after the removal (nats).
        base_loss: float64 `[n, R]` query cross-entropy of the full-data models.
    """

    query_ids: tuple[str, ...]
    skipped_ids: tuple[str, ...]
    ks: tuple[int, ...]
    seeds: tuple[int, ...]
    top_flipped: np.ndarray
    random_flipped: np.ndarray
    top_loss: np.ndarray
    random_loss: np.ndarray
    base_loss: np.ndarray

    def table(self) -> list[dict]:
        """One row per k: flip counts (over queries x seeds), flip rates and mean loss increases."""
        rows = []
        for i, k in enumerate(self.ks):
            top, rnd = self.top_flipped[:, i], self.random_flipped[:, i]
            rows.append(
                {
                    "k": k,
                    "n_trials": int(top.size),
                    "top_flips": int(top.sum()),
                    "random_flips": int(rnd.sum()),
                    "top_flip_rate": float(top.mean()) if top.size else float("nan"),
                    "random_flip_rate": float(rnd.mean()) if rnd.size else float("nan"),
                    "top_loss_increase": float((self.top_loss[:, i] - self.base_loss).mean()),
                    "random_loss_increase": float((self.random_loss[:, i] - self.base_loss).mean()),
                }
            )
        return rows


@torch.no_grad()
def _base_logits(run: TrainedRun, queries: ExampleSet, seeds: tuple[int, ...]) -> torch.Tensor:
    """Full-data logits `[R, n_query, C]` of the run's final models."""
    out = []
    for s in seeds:
        model = run.model(s)
        out.append(predict_logits(model, prepare_inputs(model, queries.inputs)))
    return torch.stack(out)


def counterfactual_test(
    run: TrainedRun,
    train: ExampleSet,
    queries: ExampleSet,
    scores: torch.Tensor | np.ndarray,
    ks: int | Sequence[int] = (10,),
    seeds: Sequence[int] | None = None,
    random_seed: int = 0,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> CounterfactualResult:
    """Remove each correct query's top-k proponents (and k random examples), retrain, count flips.

    Args:
        run: the run trained on all of `train` (its final models are the full-data reference).
        train: its training set, N examples.
        queries: the queries, n_query examples.
        scores: `[n_query, n_train]`, positive = the training example helps the query.
        ks: numbers of examples to remove (each < N).
        seeds: retraining seeds, a subset of the run's seeds (default: all of them).
        random_seed: seed of the random removals.
        executor, progress: run the `2 * n * K * R` retrainings and report `(done, total, msg)`.

    Returns:
        CounterfactualResult (flip arrays `[n, K, R]` over the n correctly classified queries).

    Raises:
        ConfigError: bad shapes or k, or no query is correctly classified by every seed's model.
    """
    n_train, n_query = len(train), len(queries)
    s = as_float64(scores, "scores", (n_query, n_train))
    ks = tuple(check_int(k, "k", 1) for k in ((ks,) if isinstance(ks, numbers.Integral) else ks))
    if not ks or max(ks) >= n_train:
        raise ConfigError(f"ks must be a non-empty list of integers in [1, {n_train}), got {list(ks)}.")
    seeds = run.seeds if seeds is None else check_seeds(seeds)
    random_seed = check_int(random_seed, "random_seed")
    base = _base_logits(run, queries, seeds)
    correct = (base.argmax(-1) == queries.labels).all(0).numpy()
    kept = np.flatnonzero(correct)
    if kept.size == 0:
        raise ConfigError("no query is classified correctly by every seed's model; choose other queries.")
    masks = np.ones((2, kept.size, len(ks), n_train), dtype=bool)
    for a, q in enumerate(kept):
        top = np.argsort(-s[q], kind="stable")
        perm = np.random.default_rng([random_seed, int(q)]).permutation(n_train)
        for b, k in enumerate(ks):
            masks[0, a, b, top[:k]] = False
            masks[1, a, b, perm[:k]] = False
    tested = queries.subset(kept)
    flat = masks.reshape(-1, n_train)
    logits = retrain_on_subsets(
        run.model_config, run.train_config, train, flat, seeds, tested, executor, progress
    )
    # logits: [2 * n * K, R, n, C]
    logits = logits.view(2, kept.size, len(ks), len(seeds), kept.size, -1)
    own = torch.arange(kept.size)
    logits = logits[:, own, :, :, own]  # each mask's model evaluated on its own query: [n, 2, K, R, C]
    flipped = (logits.argmax(-1) != tested.labels.view(-1, 1, 1, 1)).numpy()
    loss = cross_entropy(logits.movedim(0, -2), tested.labels).movedim(-1, 0).numpy()
    base_loss = cross_entropy(base[:, kept], tested.labels).T.numpy()
    return CounterfactualResult(
        query_ids=tested.ids,
        skipped_ids=tuple(queries.ids[i] for i in np.flatnonzero(~correct)),
        ks=ks,
        seeds=seeds,
        top_flipped=flipped[:, 0],
        random_flipped=flipped[:, 1],
        top_loss=loss[:, 0],
        random_loss=loss[:, 1],
        base_loss=base_loss,
    )
