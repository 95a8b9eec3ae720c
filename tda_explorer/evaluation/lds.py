"""Linear datamodeling score (LDS): ground truth by subset retraining, and the score of a method.

Ground truth (`compute_lds_truth`, artifact kind "lds_truth"): M random subsets S_j of the training set,
each of size `round(alpha * N)` (subset j is drawn by `numpy.random.default_rng([subset_seed, j])`, so it
does not depend on M); a model is retrained on each with R seeds and the target is the query loss
`losses[j, q]` = cross-entropy of query q under the model trained on S_j, averaged over the seeds.
Retraining runs in shards of `shard_size` subsets, each saved as its own artifact (kind "lds_shard"),
so an interrupted computation resumes from its finished shards. Computed once, shared by every method.

Score (`lds_score`): the prediction for subset j is `g_j(q) = sum_{i in S_j} scores[q, i]`
(`scores @ masks.T`); with positive score = helps the query, a larger g should mean a smaller loss, so
`LDS(q) = spearman_j(g_j(q), -losses[j, q])`. The mean over queries comes with a bootstrap interval.

Two ground-truth modes (`LDSConfig.mode`), both cached artifacts, answering different questions:
- "fresh" (default): each subset is retrained as a new run on its examples (`retrain_on_subsets`: the
  seed's init, but batches re-drawn over the kept examples), so the target mixes the subset's effect with
  run-to-run noise: the distribution over runs (what d-TDA and multi-seed methods aim at).
- "fixed": each subset is retrained with the *same* run as the attributed model, seed for seed: same
  init, same permutation of all N examples per epoch, same dropout masks, the removed examples weighted 0
  inside their batches (each batch still divided by its full size; `training.weighted`). This is this
  model's own counterfactual, the one `unrolled` differentiates. Use the attributed run's seeds as `seeds`.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tda_explorer.backend.stats import bootstrap_mean_ci, random_subset_masks, spearman_rows
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ArtifactError, ConfigError
from tda_explorer.evaluation._common import (
    as_float64,
    check_int,
    check_seeds,
    cross_entropy,
    fingerprint,
    offset_progress,
)
from tda_explorer.models import ModelConfig
from tda_explorer.models.text_cache import states_stored_in
from tda_explorer.store import Workspace, load_array, require_workspace, save_array, save_arrays
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.executor import Executor
from tda_explorer.training.runs import retrain_on_subsets
from tda_explorer.training.trainer import Progress
from tda_explorer.training.weighted import retrain_fixed_seed

TRUTH_KIND = "lds_truth"
MODES = ("fresh", "fixed")
SHARD_KIND = "lds_shard"


@dataclass(frozen=True)
class LDSConfig:
    """How the LDS ground truth is made.

    Args:
        n_subsets: M, the number of random training subsets.
        alpha: subset size as a fraction of the training set, in (0, 1); each subset has
            `round(alpha * N)` examples.
        seeds: retraining seeds (R = len(seeds)); the target loss is averaged over them.
        subset_seed: seed of the subsets (subset j uses `default_rng([subset_seed, j])`).
        shard_size: subsets retrained (and saved) together; a smaller shard loses less work when
            interrupted. Does not change the result, so it is not part of the artifact key.
        mode: "fresh" (subset models are new runs) or "fixed" (the attributed run replayed with the
            removed examples weighted 0; see the module docstring). "fresh" keeps the keys it always had.
    """

    n_subsets: int = 100
    alpha: float = 0.5
    seeds: tuple[int, ...] = (0,)
    subset_seed: int = 0
    shard_size: int = 10
    mode: str = "fresh"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"LDS mode {self.mode!r} is not one of {MODES}.")
        object.__setattr__(self, "n_subsets", check_int(self.n_subsets, "n_subsets", 2))
        object.__setattr__(self, "subset_seed", check_int(self.subset_seed, "subset_seed"))
        object.__setattr__(self, "shard_size", check_int(self.shard_size, "shard_size", 1))
        object.__setattr__(self, "seeds", check_seeds(self.seeds, "LDS seeds"))
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 < float(alpha) < 1.0:
            raise ConfigError(f"alpha (subset fraction) must be a number in (0, 1), got {alpha!r}.")
        object.__setattr__(self, "alpha", float(alpha))

    def subset_size(self, n_train: int) -> int:
        """Examples per subset, `round(alpha * n_train)`; ConfigError if that is 0 or all of them."""
        k = round(self.alpha * n_train)
        if not 1 <= k < n_train:
            raise ConfigError(
                f"alpha={self.alpha} of {n_train} training examples gives subsets of {k}; "
                "a subset must hold at least one example and leave at least one out."
            )
        return k

    def key_dict(self) -> dict:
        """The fields that determine the ground truth (all but `shard_size`)."""
        d = asdict(self)
        del d["shard_size"]
        if self.mode == "fresh":  # the original mode: artifact keys as before the mode existed
            del d["mode"]
        return d


@dataclass(frozen=True, eq=False)
class LDSTruth:
    """LDS ground truth.

    Attributes:
        masks: bool `[M, N]`, `masks[j, i]` = training example i is in subset j (columns follow `train_ids`).
        losses: float64 `[M, n_query]`, query cross-entropy (nats) after training on subset j, mean over
            seeds.
        seed_losses: float64 `[M, R, n_query]`, the same per retraining seed.
        logits: float32 `[M, R, n_query, C]`, the retrained models' query logits.
        train_ids: ids of the N training examples.
        query_ids: ids of the n_query queries (columns of `losses`).
        config: the LDSConfig used.
        key: the artifact key in the workspace.
    """

    masks: np.ndarray
    losses: np.ndarray
    seed_losses: np.ndarray
    logits: np.ndarray
    train_ids: tuple[str, ...]
    query_ids: tuple[str, ...]
    config: LDSConfig
    key: str


@dataclass(frozen=True, eq=False)
class LDSResult:
    """LDS of one method.

    Attributes:
        per_query: float64 `[n_query]`, Spearman correlation per query (NaN where a prediction or target
            row is constant; such queries are left out of the mean and the interval).
        mean: mean LDS over the valid queries.
        ci_low, ci_high: percentile bootstrap interval of the mean (resampling queries).
        n_valid: number of queries with a finite LDS.
        confidence: level of the interval.
        query_ids: ids of the queries, when known.
    """

    per_query: np.ndarray
    mean: float
    ci_low: float
    ci_high: float
    n_valid: int
    confidence: float
    query_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-able summary (without the per-query values)."""
        return {
            "mean": self.mean,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n_valid": self.n_valid,
            "n_query": len(self.per_query),
            "confidence": self.confidence,
        }


def subset_masks(n_train: int, config: LDSConfig, indices: Iterable[int] | None = None) -> np.ndarray:
    """Boolean masks `[len(indices), n_train]` of the LDS subsets with the given indices (default all M).

    Row for subset j has exactly `config.subset_size(n_train)` True entries, drawn without replacement
    by `numpy.random.default_rng([config.subset_seed, j])`.
    """
    rows = range(config.n_subsets) if indices is None else indices
    return random_subset_masks(n_train, config.subset_size(n_train), config.subset_seed, rows)


def lds_truth_config(
    train: ExampleSet,
    queries: ExampleSet,
    model_config: ModelConfig,
    train_config: TrainConfig,
    config: LDSConfig,
) -> dict:
    """The config dict that keys the "lds_truth" artifact (data fingerprints, model, training, settings);
    a shard's ("lds_shard") is the same without `n_subsets`, plus its subset range."""
    return {
        "train": {"fingerprint": fingerprint(train), "n": len(train)},
        "queries": {"fingerprint": fingerprint(queries), "n": len(queries)},
        "model": model_config.to_dict(),
        "training": train_config.to_dict(),
        "target": "loss",
        **config.key_dict(),
    }


def compute_lds_truth(
    train: ExampleSet,
    queries: ExampleSet,
    model_config: ModelConfig,
    train_config: TrainConfig,
    config: LDSConfig | None = None,
    workspace: Workspace | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> LDSTruth:
    """Compute (or reuse from the workspace) the LDS ground truth; see the module docstring.

    Args:
        train: the full training set (N examples); subsets are drawn from it.
        queries: the query examples whose loss is the target (e.g. the test set).
        model_config, train_config: how each subset model is trained (as for the run being explained).
        config: LDS settings (default `LDSConfig()`: M=100, alpha=0.5, one seed).
        workspace: where shards and the result are cached (required).
        executor: runs the retrainings (default: `training.runs.default_executor`, local processes).
        progress: `progress(done, total, msg)` over the M * R retrainings (finished shards count as done).

    Returns:
        The LDSTruth (masks `[M, N]`, losses `[M, n_query]`, ...).
    """
    config = config or LDSConfig()
    ws = require_workspace(workspace, "compute_lds_truth")
    truth_cfg = lds_truth_config(train, queries, model_config, train_config, config)
    base = {k: v for k, v in truth_cfg.items() if k != "n_subsets"}
    m, r, n = config.n_subsets, len(config.seeds), len(train)
    config.subset_size(n)
    shards = [(a, min(a + config.shard_size, m)) for a in range(0, m, config.shard_size)]

    done = [0]  # retrainings finished or reused, for progress

    def shard_logits(a: int, b: int) -> np.ndarray:
        """Query logits `[b - a, R, n_query, C]` of subsets a..b-1 (a "lds_shard" artifact)."""
        retrain = retrain_fixed_seed if config.mode == "fixed" else retrain_on_subsets
        report = offset_progress(progress, done[0], m * r, f"LDS ground truth, subsets {a}-{b - 1}")
        with states_stored_in(ws):
            logits = retrain(
                model_config,
                train_config,
                train,
                subset_masks(n, config, range(a, b)),
                config.seeds,
                queries,
                executor,
                report,
            ).numpy()
        done[0] += (b - a) * r
        return logits

    def compute() -> dict[str, np.ndarray]:
        done[0] = sum((b - a) * r for a, b in shards if ws.exists(SHARD_KIND, {**base, "subsets": [a, b]}))
        if progress is not None and done[0]:
            progress(done[0], m * r, f"LDS ground truth: {done[0]} retrainings reused from finished shards")
        parts = []
        for a, b in shards:
            parts.append(
                ws.cached(
                    SHARD_KIND,
                    {**base, "subsets": [a, b]},
                    lambda a=a, b=b: shard_logits(a, b),
                    save=lambda d, logits: save_array(d, "logits", logits),
                    load=lambda path, _meta, lead=(b - a, r): _check_shard(path, lead),
                    extra={"train_name": train.name},
                )
            )
        logits = np.concatenate(parts)
        seed_losses = cross_entropy(torch.from_numpy(logits), queries.labels).numpy()
        return {
            "masks": subset_masks(n, config),
            "losses": seed_losses.mean(axis=1),
            "seed_losses": seed_losses,
            "logits": logits,
            "train_ids": np.asarray(train.ids, dtype=str),
            "query_ids": np.asarray(queries.ids, dtype=str),
        }

    started = time.perf_counter()
    extra = {"lds_config": asdict(config), "train_name": train.name, "query_name": queries.name}
    return ws.cached(
        TRUTH_KIND,
        truth_cfg,
        compute,
        save=save_arrays,
        load=lambda path, _meta: _load(ws, path.name),
        extra=lambda _arrays: extra | {"seconds": time.perf_counter() - started},
    )


def _check_shard(path: Path, lead: tuple[int, int]) -> np.ndarray:
    logits = load_array(path / "logits.npy")
    if logits.ndim != 4 or logits.shape[:2] != lead:
        raise ArtifactError(
            f"LDS shard {path.name} holds logits of shape {logits.shape}, expected "
            f"[{lead[0]}, {lead[1]}, n_query, C]; delete {path} and rerun."
        )
    return logits


def load_lds_truth(key: str, workspace: Workspace | None = None) -> LDSTruth:
    """An LDSTruth from its artifact key (`LDSTruth.key`), without the data it was made from."""
    return _load(require_workspace(workspace, "load_lds_truth"), key)


def _load(ws: Workspace, key: str) -> LDSTruth:
    meta = ws.meta(TRUTH_KIND, key)
    path = ws.path(TRUTH_KIND, key)
    arrays = {
        name: load_array(path / f"{name}.npy")
        for name in ("masks", "losses", "seed_losses", "logits", "train_ids", "query_ids")
    }
    config = LDSConfig(**meta["extra"]["lds_config"])
    masks, losses = arrays["masks"], arrays["losses"]
    m, n, nq = config.n_subsets, len(arrays["train_ids"]), len(arrays["query_ids"])
    if (
        masks.shape != (m, n)
        or losses.shape != (m, nq)
        or arrays["seed_losses"].shape != (m, len(config.seeds), nq)
    ):
        raise ArtifactError(
            f"LDS truth {key} is inconsistent (masks {masks.shape}, losses {losses.shape}); "
            f"delete {path} and recompute it."
        )
    return LDSTruth(
        masks=masks.astype(bool),
        losses=losses,
        seed_losses=arrays["seed_losses"],
        logits=arrays["logits"],
        train_ids=tuple(str(i) for i in arrays["train_ids"]),
        query_ids=tuple(str(i) for i in arrays["query_ids"]),
        config=config,
        key=key,
    )


def lds_score(
    scores: torch.Tensor | np.ndarray,
    truth: LDSTruth,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> LDSResult:
    """LDS of a score matrix against the ground truth.

    Args:
        scores: `[n_query, n_train]`, rows in the order of `truth.query_ids`, columns of `truth.train_ids`;
            positive = the training example helps the query.
        truth: the ground truth.
        n_resamples, confidence, seed: the bootstrap over queries.

    Returns:
        LDSResult with `per_query[q] = spearman_j(sum_{i in S_j} scores[q, i], -losses[j, q])`.
    """
    nq, n = len(truth.query_ids), len(truth.train_ids)
    s = as_float64(scores, "scores", (nq, n))
    return lds_groups(s @ truth.masks.T.astype(np.float64), truth, n_resamples, confidence, seed)


def lds_groups(
    group_scores: torch.Tensor | np.ndarray,
    truth: LDSTruth | np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> LDSResult:
    """LDS from predictions made per subset (group scores, e.g. AirRep's `score_groups`).

    Args:
        group_scores: `[n_query, M]`, the predicted usefulness of subset j for query q (larger = lower loss),
            e.g. `attributor.score_groups(queries, torch.from_numpy(truth.masks))`.
        truth: an LDSTruth, or the target losses `[M, n_query]` of any set of subsets.
        n_resamples, confidence, seed: the bootstrap over queries.

    Returns:
        LDSResult with `per_query[q] = spearman_j(group_scores[q, j], -losses[j, q])`.
    """
    losses = truth.losses if isinstance(truth, LDSTruth) else truth
    losses = as_float64(losses, "losses", (None, None))
    m, nq = losses.shape
    preds = as_float64(group_scores, "group_scores", (nq, m))
    per_query = spearman_rows(preds, -losses.T)
    valid = per_query[np.isfinite(per_query)]
    mean = float(valid.mean()) if valid.size else float("nan")
    low, high = bootstrap_mean_ci(valid, n_resamples, confidence, seed)
    ids = truth.query_ids if isinstance(truth, LDSTruth) else ()
    return LDSResult(per_query, mean, low, high, int(valid.size), float(confidence), ids)
