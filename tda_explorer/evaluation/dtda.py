"""d-TDA checked against retraining, and d-TDA data pruning.

Validation (`validate_dtda`, artifact kind "dtda_validation"): for a handful of (query, training
example) pairs, retrain the run's pipeline without the example with each of the run's seeds (through
`retrain_on_subsets`; a staged run retrains all its stages) and compare, per pair, three samples over
the S seeds of the query's measurement m:

    with       X_s = m(theta_s)                      (the run's models, trained on everything)
    predicted  Y_s = m(theta_s) + delta_s(q, z)      (d-TDA)
    retrained  Z_s = m(theta_s without z)            (the truth; same seeds, so same init)

Reported per pair: predicted shift `mean(Y) - mean(X)`, true shift `mean(Z) - mean(X)`, mean error
`|mean(Y) - mean(Z)|`, `W2(Y, Z)` and, as the "nothing changes" reference, `W2(X, Z)`; over the pairs the
Pearson and Spearman correlations of predicted vs true shifts. Removing z changes the batch order of a
seed, so the true shift carries seed noise; pairs are chosen with large predicted shifts (both signs).

Pruning (`dtda_pruning`): usefulness to the validation set from d-TDA's mean influence over seeds vs
from one seed's prediction ("fixed seed"); the least useful (predicted to most *raise* validation loss
if kept) are removed first; both curves come from `evaluation.pruning_curve` with the run's seeds and
share its random-removal baseline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from tda_explorer.attributors.dtda import DTDAResult, compute_dtda, measurement_values, w2_distance
from tda_explorer.data.example_set import DatasetSplits
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation._common import check_int
from tda_explorer.evaluation.pruning import (
    DEFAULT_FRACTIONS,
    PruningCurve,
    pruning_curve,
    usefulness_from_scores,
)
from tda_explorer.models.text_cache import states_stored_in
from tda_explorer.store import Workspace, load_array, require_workspace, save_array, save_arrays
from tda_explorer.training.executor import Executor
from tda_explorer.training.runs import TrainedRun, retrain_on_subsets
from tda_explorer.training.stages import run_training_config
from tda_explorer.training.trainer import Progress

VALIDATION_KIND = "dtda_validation"
RETRAIN_KIND = "dtda_retrain"


@dataclass(frozen=True, eq=False)
class DTDAValidation:
    """Predicted vs retrained measurement distributions for (query, train) pairs.

    Attributes:
        pairs: `(query_id, train_id)` per pair, `P` of them.
        seeds: the S seeds (those of the run).
        measurement: the measured quantity ("loss", "margin", "prob").
        with_data: float64 `[P, S]`, X = m under the run's models.
        predicted: float64 `[P, S]`, Y = X + delta (d-TDA's prediction without the train example).
        retrained: float64 `[P, S]`, Z = m after retraining without the train example.
        key: artifact key ("" if not stored).
    """

    pairs: tuple[tuple[str, str], ...]
    seeds: tuple[int, ...]
    measurement: str
    with_data: np.ndarray
    predicted: np.ndarray
    retrained: np.ndarray
    key: str = ""
    seconds: float = 0.0

    @property
    def predicted_shift(self) -> np.ndarray:
        """`mean(Y) - mean(X)` `[P]`."""
        return self.predicted.mean(1) - self.with_data.mean(1)

    @property
    def true_shift(self) -> np.ndarray:
        """`mean(Z) - mean(X)` `[P]`."""
        return self.retrained.mean(1) - self.with_data.mean(1)

    @property
    def mean_error(self) -> np.ndarray:
        """`|mean(Y) - mean(Z)|` `[P]`."""
        return np.abs(self.predicted.mean(1) - self.retrained.mean(1))

    @property
    def w2(self) -> np.ndarray:
        """`W2(Y, Z)` `[P]`: predicted vs retrained distribution."""
        return w2_distance(self.predicted, self.retrained, axis=1)

    @property
    def w2_unchanged(self) -> np.ndarray:
        """`W2(X, Z)` `[P]`: the error of predicting that nothing changes (reference for `w2`)."""
        return w2_distance(self.with_data, self.retrained, axis=1)

    def correlation(self) -> float:
        """Pearson correlation of predicted vs true mean shifts over the pairs (NaN if < 3 pairs)."""
        if len(self.pairs) < 3:
            return float("nan")
        return float(pearsonr(self.predicted_shift, self.true_shift)[0])

    def spearman(self) -> float:
        """Spearman correlation of predicted vs true mean shifts over the pairs (NaN if < 3 pairs)."""
        if len(self.pairs) < 3:
            return float("nan")
        return float(spearmanr(self.predicted_shift, self.true_shift)[0])

    def summary(self) -> dict:
        """JSON-able summary: correlations, mean errors and W2s (means over pairs) and sign agreement."""
        same_sign = np.sign(self.predicted_shift) == np.sign(self.true_shift)
        return {
            "n_pairs": len(self.pairs),
            "n_seeds": len(self.seeds),
            "measurement": self.measurement,
            "pearson": self.correlation(),
            "spearman": self.spearman(),
            "sign_agreement": float(same_sign.mean()),
            "mean_error": float(self.mean_error.mean()),
            "w2": float(self.w2.mean()),
            "w2_unchanged": float(self.w2_unchanged.mean()),
        }

    def table(self) -> list[dict]:
        """One row per pair: ids, predicted and true shift, mean error, W2s."""
        cols = zip(
            self.predicted_shift, self.true_shift, self.mean_error, self.w2, self.w2_unchanged, strict=True
        )
        return [
            {
                "query_id": q,
                "train_id": t,
                "predicted_shift": float(a),
                "true_shift": float(b),
                "mean_error": float(c),
                "w2": float(d),
                "w2_unchanged": float(e),
            }
            for (q, t), (a, b, c, d, e) in zip(self.pairs, cols, strict=True)
        ]


def select_pairs(result: DTDAResult, n_pairs: int) -> list[tuple[int, int]]:
    """`(query, train)` positions with the largest predicted |mean shift|, about half of each sign.

    Greedy over all pairs by decreasing |shift|: a pair is taken if its query and its training example
    are not used yet and its sign still has room (`ceil(n/2)` raising m, `floor(n/2)` lowering it), so
    fewer than `n_pairs` come back when there are not enough distinct candidates.
    """
    n_pairs = check_int(n_pairs, "n_pairs", 1)
    shift = result.mean_shift()
    room = {1: n_pairs - n_pairs // 2, -1: n_pairs // 2}
    chosen: list[tuple[int, int]] = []
    used_q: set[int] = set()
    used_t: set[int] = set()
    for pos in np.argsort(-np.abs(shift), axis=None, kind="stable"):
        q, t = (int(i) for i in np.unravel_index(pos, shift.shape))
        sign = int(np.sign(shift[q, t]))
        if sign == 0 or len(chosen) == n_pairs:
            break
        if room[sign] == 0 or q in used_q or t in used_t:
            continue
        chosen.append((q, t))
        used_q.add(q)
        used_t.add(t)
        room[sign] -= 1
    return chosen


def leave_one_out_logits(
    run: TrainedRun,
    splits: DatasetSplits,
    removed_ids: Sequence[str],
    split: str = "test",
    seeds: Sequence[int] | None = None,
    workspace: Workspace | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Query logits after retraining the run's pipeline without each training example (cached per example).

    Artifact kind "dtda_retrain", one per (run, removed id, query split, seeds), so any d-TDA setting or
    pair selection that removes the same example reuses it.

    Returns:
        `{train id: float32 [S, n_query, C]}`, the `split` queries' logits under each seed's retrained model.
    """
    ws = require_workspace(workspace, "leave_one_out_logits")
    seeds = tuple(run.seeds if seeds is None else seeds)
    train = splits.train

    def cfg(t: str) -> dict:
        return {"run": run.key, "removed": t, "queries": split, "seeds": list(seeds)}

    todo = [t for t in dict.fromkeys(removed_ids) if not ws.exists(RETRAIN_KIND, cfg(t))]
    if todo:
        masks = np.ones((len(todo), len(train)), dtype=bool)
        masks[np.arange(len(todo)), train.index_of(todo)] = False
        with states_stored_in(ws):
            logits = retrain_on_subsets(
                run.model_config,
                run_training_config(run),
                train,
                masks,
                seeds,
                getattr(splits, split),
                executor,
                progress,
            )  # [U, S, n_query, C]
        for i, t in enumerate(todo):
            with ws.write(RETRAIN_KIND, cfg(t)) as d:
                save_array(d, "logits", logits[i].numpy())
    return {t: load_array(ws.open(RETRAIN_KIND, cfg(t)) / "logits.npy") for t in removed_ids}


def validate_dtda(
    run: TrainedRun,
    splits: DatasetSplits,
    settings: dict | None = None,
    n_pairs: int = 8,
    pairs: Sequence[tuple[str, str]] | None = None,
    split: str = "test",
    workspace: Workspace | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> DTDAValidation:
    """Retrain without a few training examples and compare with d-TDA's predicted distributions (cached).

    Args:
        run: a run trained on all of `splits.train` (`train_run` or `train_stages`).
        settings: d-TDA settings (see `attributors.dtda.DTDA`), e.g. {"measurement": "loss"}.
        n_pairs: pairs chosen by `select_pairs` when `pairs` is None.
        pairs: explicit `(query_id, train_id)` pairs.
        split: query split ("test" or "val").
        executor, progress: run the `n_unique_train x S` retrainings (`leave_one_out_logits`, cached per
            removed example, so other d-TDA settings on the same pairs retrain nothing) and report them.

    Returns:
        DTDAValidation (per pair: with / predicted / retrained samples over the seeds).
    """
    ws = require_workspace(workspace, "validate_dtda")
    result = compute_dtda(run, splits, settings, split, ws)
    queries, train = getattr(splits, split), splits.train
    if pairs is None:
        idx = select_pairs(result, n_pairs)
    else:
        idx = [(int(queries.index_of([q])[0]), int(train.index_of([t])[0])) for q, t in pairs]
    if not idx:
        raise ConfigError("no (query, train) pair to validate: d-TDA predicts no change anywhere.")
    ids = [(queries.ids[q], train.ids[t]) for q, t in idx]
    cfg = {"dtda": result.config, "pairs": [list(p) for p in ids], "seeds": list(result.seeds)}

    def compute() -> dict[str, np.ndarray]:
        removed = sorted({t for _, t in idx})
        logits = leave_one_out_logits(
            run, splits, [train.ids[t] for t in removed], split, result.seeds, ws, executor, progress
        )
        targets = _targets(queries.labels, result.target_class)
        values = {
            t: measurement_values(torch.from_numpy(logits[train.ids[t]]), targets, result.measurement)
            for t in removed
        }
        return {
            "with_data": np.stack([result.measurements[:, q] for q, _ in idx]),
            "predicted": np.stack([result.pair(q, t)[1] for q, t in idx]),
            "retrained": np.stack([values[t][:, q].numpy() for q, t in idx]),  # [P, S]
        }

    start = time.perf_counter()
    return ws.cached(
        VALIDATION_KIND,
        cfg,
        compute,
        save=save_arrays,
        load=lambda path, _meta: load_dtda_validation(path.name, ws),
        extra=lambda _arrays: {"seconds": time.perf_counter() - start},
    )


def stored_dtda_validation(dtda_config: dict, workspace: Workspace) -> DTDAValidation | None:
    """The newest stored validation of the d-TDA result made with `dtda_config` (`DTDAResult.config`),
    or None; nothing is retrained."""
    ws = require_workspace(workspace, "stored_dtda_validation")
    for meta in ws.list(VALIDATION_KIND):
        if meta["config"].get("dtda") == dtda_config:
            return load_dtda_validation(meta["key"], ws)
    return None


def load_dtda_validation(key: str, workspace: Workspace | None = None) -> DTDAValidation:
    """A stored DTDAValidation by its artifact key (`DTDAValidation.key`; list them with
    `Workspace.list("dtda_validation")`, whose configs hold the d-TDA config under "dtda")."""
    ws = require_workspace(workspace, "load_dtda_validation")
    meta = ws.meta(VALIDATION_KIND, key)
    path = ws.path(VALIDATION_KIND, key)
    cfg = meta["config"]
    return DTDAValidation(
        pairs=tuple((str(q), str(t)) for q, t in cfg["pairs"]),
        seeds=tuple(int(s) for s in cfg["seeds"]),
        measurement=cfg["dtda"]["method"]["measurement"],
        with_data=load_array(path / "with_data.npy"),
        predicted=load_array(path / "predicted.npy"),
        retrained=load_array(path / "retrained.npy"),
        key=key,
        seconds=float(meta["extra"].get("seconds", 0.0)),
    )


def _targets(labels: torch.Tensor, target_class: int | None) -> torch.Tensor:
    return labels if target_class is None else torch.full_like(labels, target_class)


@dataclass(frozen=True, eq=False)
class DTDAPruning:
    """Pruning curves from d-TDA's mean over seeds and from a single seed's prediction.

    Attributes:
        averaged: PruningCurve with usefulness from the mean influence over seeds (its `random_*` is the
            random-removal baseline).
        fixed_seed: PruningCurve with usefulness from the first seed alone.
        seed_used: the seed of `fixed_seed`.
    """

    averaged: PruningCurve
    fixed_seed: PruningCurve
    seed_used: int

    def table(self) -> list[dict]:
        """One row per removed fraction: test accuracy / loss (mean over seeds) of the three strategies."""
        rows = []
        for a, f in zip(self.averaged.table(), self.fixed_seed.table(), strict=True):
            rows.append(
                {
                    "fraction": a["fraction"],
                    "n_removed": a["n_removed"],
                    "dtda_acc": a["method_acc"],
                    "fixed_seed_acc": f["method_acc"],
                    "random_acc": a["random_acc"],
                    "dtda_loss": a["method_loss"],
                    "fixed_seed_loss": f["method_loss"],
                    "random_loss": a["random_loss"],
                }
            )
        return rows


def dtda_pruning(
    run: TrainedRun,
    splits: DatasetSplits,
    settings: dict | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    random_seed: int = 0,
    workspace: Workspace | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> DTDAPruning:
    """Prune by d-TDA usefulness to the validation set (mean over seeds vs one seed) and retrain.

    Usefulness `[n_train]` = sum over validation queries of the mean influence (house sign: positive =
    helps); the fixed-seed version uses `helps_sign * deltas[0]` only. Retraining uses the run's seeds
    (and pipeline, for staged runs); accuracy is measured on `splits.test`.
    """
    result = compute_dtda(run, splits, settings, "val", workspace)
    averaged_use = usefulness_from_scores(result.mean_influence())
    fixed_use = usefulness_from_scores(result.helps_sign * result.deltas[0].astype(np.float64))
    common = {
        "train": splits.train,
        "test": splits.test,
        "model_config": run.model_config,
        "train_config": run_training_config(run),
        "fractions": fractions,
        "seeds": result.seeds,
        "random_seed": random_seed,
        "executor": executor,
        "progress": progress,
    }
    return DTDAPruning(
        averaged=pruning_curve(averaged_use, **common),
        fixed_seed=pruning_curve(fixed_use, **common),
        seed_used=result.seeds[0],
    )
