"""Trust cues: each attributor's measured LDS on a run, a cheap quick check, and the best measured one.

A measurement is an artifact of kind `MEASURE_KIND`, keyed by the run, the (true-label, test-query) score
artifact and the LDS ground truth it was scored against; its `extra` holds the LDS summary
(`LDSResult.to_dict()`) and how the truth was made (subsets M, alpha, retraining seeds, mode). LDS targets
the query loss at the true label, so it is always measured on the stored true-label scores
(`compute_scores`), whichever measurement the app shows.

- `measured_lds(run, ws)`: `{score_key: LDSMeasure}` of every test-score artifact of the run with a stored
  measurement (the one over the most subsets when there are several). Reads metadata only.
- `record_lds(run, ws, score_key, truth)`: score one artifact against a truth and store the measurement
  (the Evaluation page records what it computes).
- `measure_stored(run, splits, ws)`: the same after recording unmeasured attributors against the largest
  stored ground truth of the run (cheap: no retraining).
- `quick_check(run, splits, score_key_or_method, ws, n_subsets=20, ...)`: a small LDS: the ground truth of
  `lds.compute_lds_truth` (cached and shared; a larger stored truth for the same data is reused instead;
  its shards are reused by a later, larger truth), then `record_lds`.
- `best_attributor(run, ws)`: the score key with the highest measured mean LDS, None when nothing is measured.
  Measurements over different ground truths are compared as they are (each is an estimate of the same LDS).
- `quick_check_seconds(run, n_subsets)`: the check's estimated wall time from the run's own training times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tda_explorer.attributors.scores import list_scores, load_scores
from tda_explorer.data.example_set import DatasetSplits
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation.lds import (
    TRUTH_KIND,
    LDSConfig,
    LDSTruth,
    compute_lds_truth,
    lds_score,
    lds_truth_config,
    load_lds_truth,
)
from tda_explorer.store import Workspace, to_jsonable
from tda_explorer.training.executor import Executor
from tda_explorer.training.runs import TrainedRun
from tda_explorer.training.trainer import Progress

MEASURE_KIND = "lds_measure"
QUICK_SUBSETS = 20


@dataclass(frozen=True)
class LDSMeasure:
    """One attributor's measured LDS on a run.

    Attributes:
        score_key: the test-query score artifact measured.
        method: the method name ("trak", ...); settings: its settings (without "method").
        mean, ci_low, ci_high: mean LDS over the test queries and its bootstrap interval (`confidence`).
        n_valid: queries with a finite LDS; n_subsets: subsets M of the ground truth; alpha: their size
            fraction; seeds: retraining seeds per subset; mode: "fresh" or "fixed" (see `evaluation.lds`).
        truth_key: the ground truth artifact; created: when the measurement was stored (ISO).
    """

    score_key: str
    method: str
    settings: dict
    mean: float
    ci_low: float
    ci_high: float
    confidence: float
    n_valid: int
    n_subsets: int
    alpha: float
    seeds: tuple[int, ...]
    mode: str
    truth_key: str
    created: str = ""

    @property
    def half_width(self) -> float:
        """Half the interval's width (the "±" of `label`)."""
        return (self.ci_high - self.ci_low) / 2

    def label(self) -> str:
        """`LDS 0.47 ± 0.03 (20 subsets)` (the mode is named when it is "fixed")."""
        mode = ", fixed seed" if self.mode == "fixed" else ""
        return f"LDS {self.mean:.2f} ± {self.half_width:.2f} ({self.n_subsets} subsets{mode})"


def _measure(meta: dict) -> LDSMeasure:
    e = meta["extra"]
    return LDSMeasure(
        score_key=meta["config"]["scores"],
        method=e["method"],
        settings=e["settings"],
        mean=float(np.nan if e["mean"] is None else e["mean"]),
        ci_low=float(np.nan if e["ci_low"] is None else e["ci_low"]),
        ci_high=float(np.nan if e["ci_high"] is None else e["ci_high"]),
        confidence=float(e["confidence"]),
        n_valid=int(e["n_valid"]),
        n_subsets=int(e["n_subsets"]),
        alpha=float(e["alpha"]),
        seeds=tuple(e["seeds"]),
        mode=e["mode"],
        truth_key=meta["config"]["truth"],
        created=meta.get("created", ""),
    )


def measured_lds(run: TrainedRun, workspace: Workspace) -> dict[str, LDSMeasure]:
    """`{score_key: LDSMeasure}` for the run's measured test-score artifacts (most subsets first, then
    "fresh" before "fixed", then the newest). Score artifacts deleted since are left out."""
    present = {m["key"] for m in list_scores(workspace, run.key)}
    out: dict[str, LDSMeasure] = {}
    for meta in workspace.list(MEASURE_KIND):
        if meta["config"].get("run") != run.key or meta["config"].get("scores") not in present:
            continue
        m = _measure(meta)
        old = out.get(m.score_key)
        if old is None or (m.n_subsets, m.mode == "fresh") > (old.n_subsets, old.mode == "fresh"):
            out[m.score_key] = m
    return out


def best_attributor(run: TrainedRun, workspace: Workspace) -> LDSMeasure | None:
    """The measurement with the highest mean LDS among the run's attributors, None when none is measured."""
    finite = [m for m in measured_lds(run, workspace).values() if np.isfinite(m.mean)]
    return max(finite, key=lambda m: m.mean) if finite else None


def record_lds(run: TrainedRun, workspace: Workspace, score_key: str, truth: LDSTruth) -> LDSMeasure:
    """Score the (true-label, test) score artifact `score_key` against `truth` and store the measurement
    (reused when it is already stored). ConfigError when the artifact's queries are not the truth's."""
    cfg = {"run": run.key, "scores": score_key, "truth": truth.key}
    if not workspace.exists(MEASURE_KIND, cfg):
        meta = workspace.meta("scores", score_key)
        if meta["config"].get("run") != run.key:
            raise ConfigError(
                f"score artifact {score_key} belongs to run {meta['config'].get('run')}, not {run.key}."
            )
        result = load_scores(workspace, meta["config"])
        if list(result.query_ids) != list(truth.query_ids) or list(result.train_ids) != list(truth.train_ids):
            raise ConfigError(
                f"score artifact {score_key} ({result.method}) was not computed on the ground truth's queries "
                "and training set; LDS is measured on the test-set scores of the same data."
            )
        lds = lds_score(result.scores, truth)
        c = truth.config
        extra = {
            **lds.to_dict(),
            "method": result.method,
            "settings": {k: v for k, v in result.config["method"].items() if k != "method"},
            "n_subsets": c.n_subsets,
            "alpha": c.alpha,
            "seeds": list(c.seeds),
            "mode": c.mode,
        }
        with workspace.write(MEASURE_KIND, cfg, extra=extra):
            pass
    return _measure(workspace.meta(MEASURE_KIND, workspace.key(MEASURE_KIND, cfg)))


def resolve_score_key(run: TrainedRun, workspace: Workspace, score_key_or_method: str) -> str:
    """A test-score artifact key of the run from its key, a unique prefix of it, or a method name (then its
    newest artifact). ConfigError listing what is computed otherwise."""
    tests = [m for m in list_scores(workspace, run.key) if m["config"]["queries"] == "test"]
    keys = [m["key"] for m in tests]
    prefixed = [k for k in keys if k.startswith(score_key_or_method)]
    if score_key_or_method in keys or len(prefixed) == 1:
        return score_key_or_method if score_key_or_method in keys else prefixed[0]
    by_method = [m["key"] for m in tests if m["config"]["method"]["method"] == score_key_or_method]
    if by_method:
        return by_method[0]  # list_scores is newest first
    have = ", ".join(f"{m['config']['method']['method']} ({m['key'][:8]})" for m in tests) or "none"
    raise ConfigError(
        f"no single test-score artifact of run {run.key[:8]} matches {score_key_or_method!r}; computed: {have}."
    )


_SETTINGS = ("alpha", "seeds", "subset_seed", "mode")  # the LDSConfig fields in a truth's key, beyond M


def _stored_truth(
    run: TrainedRun, splits: DatasetSplits, workspace: Workspace, config: LDSConfig | None
) -> LDSTruth | None:
    """The largest stored ground truth for the run's data, model and recipe, or None. With `config`: only
    truths with its settings and at least `config.n_subsets` subsets; without: any settings ("fresh" first)."""
    want = to_jsonable(
        lds_truth_config(splits.train, splits.test, run.model_config, run.train_config, config or LDSConfig())
    )
    want.pop("n_subsets")
    if config is None:
        want = {k: v for k, v in want.items() if k not in _SETTINGS}
    best = None
    for meta in workspace.list(TRUTH_KIND):
        have = {k: v for k, v in meta["config"].items() if config is not None or k not in _SETTINGS}
        n = have.pop("n_subsets", 0)
        rank = (meta["config"].get("mode", "fresh") == "fresh", n)
        if have == want and n >= (config.n_subsets if config else 2) and (best is None or rank > best[0]):
            best = (rank, meta["key"])
    return None if best is None else load_lds_truth(best[1], workspace)


def measure_stored(run: TrainedRun, splits: DatasetSplits, workspace: Workspace) -> dict[str, LDSMeasure]:
    """`measured_lds` after recording every unmeasured test-score artifact of the run against the largest
    stored ground truth of its data (a matmul each; nothing is retrained). The run's own recipe only."""
    measures = measured_lds(run, workspace)
    tests = [m["key"] for m in list_scores(workspace, run.key) if m["config"]["queries"] == "test"]
    todo = [k for k in tests if k not in measures]
    ready = todo and run.train_config is not None and workspace.list(TRUTH_KIND)  # (no data hashing without)
    truth = _stored_truth(run, splits, workspace, None) if ready else None
    if truth is None:
        return measures
    for key in todo:
        try:
            record_lds(run, workspace, key, truth)
        except ConfigError:
            continue  # scores of other queries (e.g. a subset of the test set): not comparable, left out
    return measured_lds(run, workspace)


def quick_check_seconds(run: TrainedRun, n_subsets: int = QUICK_SUBSETS, alpha: float = 0.5) -> float | None:
    """Estimated wall seconds of `quick_check`'s retrainings: `n_subsets x alpha x` the run's mean training
    time per seed (a subset model trains on `alpha` of the examples). None without recorded times."""
    times = [float(m["seconds"]) for m in run.metrics.values() if isinstance(m, dict) and m.get("seconds")]
    return n_subsets * alpha * float(np.mean(times)) if times else None


def quick_check(
    run: TrainedRun,
    splits: DatasetSplits,
    score_key_or_method: str,
    workspace: Workspace,
    n_subsets: int = QUICK_SUBSETS,
    alpha: float = 0.5,
    seeds: tuple[int, ...] = (0,),
    mode: str = "fresh",
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> LDSMeasure:
    """A small LDS of one attributor on this run, stored (see the module docstring).

    Args:
        score_key_or_method: a test-score artifact key (or prefix) of the run, or a computed method's name.
        n_subsets, alpha, seeds, mode: the ground truth (`LDSConfig`); a stored truth with more subsets
            and otherwise the same settings is used as is.
        executor, progress: for the retrainings (`compute_lds_truth`).

    Returns: the stored LDSMeasure. ConfigError for an imported run without a training recipe.
    """
    run.require_recipe("An LDS check")
    key = resolve_score_key(run, workspace, score_key_or_method)
    config = LDSConfig(n_subsets=n_subsets, alpha=alpha, seeds=tuple(seeds), mode=mode)
    started = time.perf_counter()
    truth = _stored_truth(run, splits, workspace, config)
    if truth is None:
        truth = compute_lds_truth(
            splits.train,
            splits.test,
            run.model_config,
            run.train_config,
            config,
            workspace,
            executor,
            progress,
        )
    measure = record_lds(run, workspace, key, truth)
    if progress is not None:
        progress(1, 1, f"LDS check done in {time.perf_counter() - started:.1f} s")
    return measure
