"""Exact (unrolled) scores of one query on demand, cached per run and query (what the app shows on a click).

`exact_scores_for_query(run, query_id, workspace)` replays each chosen seed of a run made by this
package's trainer (`Unrolled.fit`) and differentiates one test query's loss, at its true label or at
another class (the app's "predicted" measurement), back through every optimizer step. Sign and scale as
`unrolled`: `scores[i]` = predicted increase of the query's loss when training example i is removed from
its batches (fixed-seed removal), averaged over the seeds; positive = i helps the query. The result is
saved as an artifact of kind `KIND` keyed by run, query, class and seeds, so a second click is a load.

Cost per call without the cache: one replay of each seed (about one training, skipped when a fitted
`Unrolled` is passed in) plus one reverse pass per seed: about one training's worth of compute for the
zoo's MLP / logistic regression trained by SGD (the closed-form step on the tape `fit` keeps), about
three for other models (autograd's double backward and a second replay; see
`attributors.unrolled.attributor`; times in RESULTS.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tda_explorer.attributors.unrolled.attributor import Unrolled
from tda_explorer.data import DatasetSpec, DatasetSplits, load_dataset
from tda_explorer.errors import ConfigError
from tda_explorer.store import Workspace, load_array, save_array
from tda_explorer.training import TrainedRun
from tda_explorer.training.trainer import Progress

KIND = "unrolled_query"


@dataclass(frozen=True)
class ExactScores:
    """Exact scores of one query.

    Attributes:
        query_id: the test example's id.
        target: the class whose loss is measured.
        seeds: the run seeds replayed.
        scores: float32 `[N]`, mean over seeds of `-d loss / d w_i` (positive = helps the query).
        per_seed: float32 `[S, N]`, the same per seed.
        seconds: wall time of the computation (for a cached result: of the original computation).
        cached: True when loaded from the workspace.
    """

    query_id: str
    target: int
    seeds: tuple[int, ...]
    scores: np.ndarray
    per_seed: np.ndarray
    seconds: float
    cached: bool

    def top_k(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the `k` most helpful (descending score) and `k` most harmful (ascending) examples."""
        order = np.argsort(self.scores, kind="stable")
        return order[::-1][:k].copy(), order[:k].copy()


def replayable(run: TrainedRun) -> str | None:
    """None when `run` can be replayed exactly (trained by this package from a recipe), else the reason."""
    if run.train_config is None:
        return "the run has no training recipe (an imported run): exact replay needs this package's trainer."
    return None


def _splits(run: TrainedRun) -> DatasetSplits:
    return load_dataset(DatasetSpec.from_dict(run.dataset))


def exact_config(run: TrainedRun, query_id: str, target: int, seeds) -> dict:
    """The artifact key of one query's exact scores (kind `KIND`): run, query, target class, replayed seeds."""
    return {
        "run": run.key,
        "query_id": str(query_id),
        "target": int(target),
        "seeds": [int(s) for s in seeds],
    }


def exact_scores_for_query(
    run: TrainedRun,
    query_id: str,
    workspace: Workspace,
    splits: DatasetSplits | None = None,
    target: int | None = None,
    seeds: str | int | Sequence[int] = "all",
    attributor: Unrolled | None = None,
    progress: Progress | None = None,
) -> ExactScores:
    """Exact scores of test query `query_id` (see module docstring), from the cache or computed.

    Args:
        splits: the run's dataset (None = loaded from `run.dataset`).
        target: class whose loss is measured (None = the query's true label).
        seeds: which seeds to replay ("all", "first", n, or a list); ignored when `attributor` is given.
        attributor: an `Unrolled` already fitted on `run` (its replays are reused).
        progress: `(done, total, message)` callback (replays, then reverse passes).

    Raises:
        ConfigError: the run is not replayable, the query id is unknown, or the target is out of range.
    """
    reason = replayable(run)
    if reason:
        raise ConfigError(reason)
    splits = splits or _splits(run)
    test = splits.test
    if query_id not in set(test.ids):
        raise ConfigError(f"query {query_id!r} is not a test example of this run's dataset.")
    q = test.index_of([query_id])[0]
    label = int(test.labels[q])
    target = label if target is None else int(target)
    if not 0 <= target < test.n_classes:
        raise ConfigError(f"target class {target} is out of range [0, {test.n_classes}).")
    chosen = attributor.chosen_seeds_ if attributor is not None else run.select_seeds(seeds)
    config = exact_config(run, query_id, target, chosen)
    if workspace.exists(KIND, config):
        path = workspace.open(KIND, config)
        per_seed = load_array(path / "per_seed.npy")
        meta = workspace.meta(KIND, path.name)
        return ExactScores(
            str(query_id), target, chosen, per_seed.mean(0), per_seed, meta["extra"]["seconds"], True
        )
    start = time.perf_counter()
    if attributor is None:
        attributor = Unrolled(seeds=list(chosen), progress=progress).fit(run, splits.train)
    query = test.subset([q])
    targets = torch.tensor([target], dtype=torch.long)
    rows = []
    for i, member in enumerate(attributor.members_):
        rows.append(-attributor.weight_gradients(member, query, targets)[0].numpy())
        if progress is not None:
            progress(i + 1, len(attributor.members_), f"exact: seed {member.seed} differentiated")
    per_seed = np.stack(rows).astype(np.float32)
    seconds = round(time.perf_counter() - start, 2)
    with workspace.write(KIND, config, {"seconds": seconds}) as tmp:
        save_array(tmp, "per_seed", per_seed)
    return ExactScores(str(query_id), target, chosen, per_seed.mean(0), per_seed, seconds, False)
