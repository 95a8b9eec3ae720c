"""Iterative attribution pruning: remove a small share, retrain on the kept set, score again, repeat.

A first-order attribution predicts the effect of removing a few examples well and of removing many badly
(removing 10% of the training set in one go extrapolates the linear prediction 40x further than removing
0.25%). `iterative_usefulness` removes in rounds instead: in each round it retrains the run's recipe on
the kept set (`run.train_config`, the run's seeds, each job through `executor`), fits the attributor on
that model and the kept examples, scores the validation queries (`[n_val, n_kept]`, positive = helps),
ranks the kept examples with `evaluation.pruning.rule_usefulness` under the base rule, and removes the
`round_fraction * N` lowest (N = the full training set; the last round may remove fewer so the total is
`round(max_fraction * N)`; `round_sizes`). The first round scores the full run itself (no retraining); the own loss of
"harm_loss" is recomputed on each round's model; the mislabel score of "harm_mislabel" is one vector for
the full set (out-of-fold probabilities are 15 retrainings: not redone per round), restricted to the kept
examples.

Result: usefulness `[N]`, higher = kept longer: the removed examples get `-(R - r)` for the r-th removed
(the first removed is the lowest), the never-removed ones their last round's usefulness (within-class ranks
in [0, 1]), so removing any prefix of the removal order up to `max_fraction` is exactly the rounds'
choice (nested; feed it to `pruning_curves` like any usefulness). Cost: `rounds x (retrain x seeds + fit +
score)`; cached as artifact kind "iterative_usefulness" keyed by the run, the data, the attributor and
its settings, the rule and the round settings (`compute_iterative_usefulness`). Rules: `ITERATIVE_RULES`
("iterative_<base>").
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from tda_explorer.backend.usefulness import ITERATIVE_RULES
from tda_explorer.data.example_set import DatasetSplits, ExampleSet, examples_fingerprint
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation._common import as_float64
from tda_explorer.evaluation.pruning import rule_usefulness
from tda_explorer.store import Workspace, load_array, require_workspace, save_array
from tda_explorer.store.kinds import ArtifactKind, register_kind
from tda_explorer.training.executor import Executor
from tda_explorer.training.runs import TrainedRun, TrainJob, default_executor, run_train_job
from tda_explorer.training.trainer import Progress

#: Default share of the full training set removed per round (10% removed = 4 rounds).
ROUND_FRACTION = 0.025
ITERATIVE_KIND = "iterative_usefulness"


def base_rule(rule: str) -> str:
    """The per-round rule of an iterative rule ("iterative_harm" -> "harm"); ConfigError for another name."""
    if rule not in ITERATIVE_RULES:
        raise ConfigError(f"iterative pruning rule {rule!r} is not one of {ITERATIVE_RULES}.")
    return rule.removeprefix("iterative_")


def n_rounds(n: int, max_fraction: float, round_fraction: float = ROUND_FRACTION) -> tuple[int, int]:
    """`(examples removed per round, examples removed in total)` for a training set of `n` (the rounds'
    sizes: `round_sizes`)."""
    if not 0.0 < round_fraction <= max_fraction < 1.0:
        raise ConfigError(
            f"iterative pruning needs 0 < round_fraction <= max_fraction < 1, got {round_fraction}, {max_fraction}."
        )
    step, total = max(1, round(round_fraction * n)), round(max_fraction * n)
    if total < 1 or total >= n:
        raise ConfigError(f"removing {total} of {n} training examples is not a pruning; change max_fraction.")
    return step, total


def round_sizes(step: int, total: int) -> np.ndarray:
    """Examples removed in each round `[R]` (sum = `total`, R = `round(total / step)` >= 1): equal up to one,
    so no round pays a retraining for a handful of examples (`total=65, step=32` -> `[32, 33]`)."""
    rounds = max(1, round(total / step))
    return np.diff(np.round(np.linspace(0, total, rounds + 1)).astype(int))


def retrain_kept(run: TrainedRun, train: ExampleSet, kept: np.ndarray, executor: Executor | None = None,
                 progress: Progress | None = None) -> TrainedRun:  # fmt: skip
    """The run's recipe retrained on `train.subset(kept)` with each of the run's seeds: an in-memory
    TrainedRun (not stored in the workspace; its key is the run's key + a digest of the kept ids; what an
    imported run imported is kept, so its recipe and weight decay stay readable). Attributors that cache
    by run key (TRAK's held-out tuning, AirRep, ensembles) store their artifacts under that synthetic key."""
    recipe = run.require_recipe("iterative pruning")
    if run.stages is not None:
        raise ConfigError("iterative pruning retrains a single-stage recipe; this run is multi-stage.")
    data = train.subset(np.flatnonzero(kept))
    executor = executor or default_executor(run.model_config, recipe)
    jobs = [TrainJob(run.model_config, recipe, data, int(s)) for s in run.seeds]
    results = executor.map(run_train_job, jobs, progress)
    digest = hashlib.sha256("\x1e".join(data.ids).encode()).hexdigest()[:12]
    return dataclasses.replace(
        run, key=f"{run.key}-kept-{digest}", checkpoints={r.seed: r.checkpoints for r in results},
        metrics={r.seed: {} for r in results},
    )  # fmt: skip


def fit_and_score(run: TrainedRun, splits: DatasetSplits, method: str, settings: dict,
                  workspace: Workspace | None = None) -> np.ndarray:  # fmt: skip
    """`[n_val, n_train]` validation scores of `method` fitted on `run` and `splits.train` (as
    `attributors.scores.compute_scores` fits it, without storing the scores)."""
    from tda_explorer.attributors.scores import prepared_attributor
    from tda_explorer.models.text_cache import states_stored_in

    attributor = prepared_attributor(method, settings, splits, workspace)
    with states_stored_in(workspace):
        attributor.fit(run, splits.train)
        return np.asarray(torch.as_tensor(attributor.score(splits.val)).double().cpu())


def iterative_usefulness(
    run: TrainedRun,
    splits: DatasetSplits,
    rule: str,
    max_fraction: float,
    score_fn: Callable[[TrainedRun, DatasetSplits], np.ndarray],
    round_fraction: float = ROUND_FRACTION,
    mislabel: np.ndarray | None = None,
    first_scores: np.ndarray | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Usefulness `[N]` of round-by-round pruning (module docstring); higher = kept longer.

    Args:
        run: the trained run (its recipe is retrained on each round's kept set).
        splits: the run's data; `splits.train` `[N]` is pruned, `splits.val` scored (`splits.test` is never
            read).
        rule: one of `ITERATIVE_RULES`.
        max_fraction: the share of `splits.train` to remove in total, in (0, 1).
        score_fn: `score_fn(run, kept) -> [n_val, n_kept]` validation scores of one attributor, `kept` having
            `.train` (the kept examples) and `.val` (e.g.
            `lambda r, s: fit_and_score(r, s, "influence", {})`); called once per round.
        round_fraction: the share of the full training set removed per round.
        mislabel: `[N]` mislabel score, higher = more suspicious (rule "iterative_harm_mislabel").
        first_scores: `[n_val, N]` the full run's scores on `splits.val` (not another split: the rounds
            score `splits.val`) when already computed; round 1 then does not call `score_fn`.
        executor: runs the retrainings; `progress(done, total, msg)` counts rounds, its message says
            which step of the round runs.
    """
    from tda_explorer.evaluation.mislabel import training_loss_scores

    base = base_rule(rule)
    train = splits.train
    n = len(train)
    step, total = n_rounds(n, max_fraction, round_fraction)
    if base == "harm_mislabel":
        if mislabel is None:
            raise ConfigError(f"rule {rule!r} needs a mislabel score per training example.")
        mislabel = as_float64(mislabel, "mislabel", (n,))
    sizes = round_sizes(step, total)
    rounds = len(sizes)
    kept = np.ones(n, dtype=bool)
    out = np.zeros(n)
    removed: list[int] = []
    current, sub = run, splits

    def report(r: int, msg: str) -> None:
        if progress is not None:
            progress(r, rounds, f"round {r + 1}/{rounds}: {msg}")

    for r in range(rounds):
        report(r, f"fitting and scoring {int(kept.sum())} kept examples")
        idx = np.flatnonzero(kept)
        if r == 0 and first_scores is not None:
            scores = as_float64(first_scores, "first_scores", (len(splits.val), n))
        else:
            scores = as_float64(score_fn(current, sub), "round scores", (len(splits.val), len(idx)))
        own_loss = training_loss_scores(current, sub.train).double().numpy() if base == "harm_loss" else None
        useful = rule_usefulness(
            scores, base, sub.train.labels.numpy(), own_loss=own_loss,
            mislabel=None if mislabel is None else mislabel[idx],
        )  # fmt: skip
        take = idx[np.argsort(useful, kind="stable")[: sizes[r]]]
        removed.extend(int(i) for i in take)
        out[idx] = useful
        kept[take] = False
        if r + 1 < rounds:
            current = retrain_kept(
                run, train, kept, executor, lambda d, t, m, r=r: report(r, f"retraining {d}/{t} seeds ({m})")
            )
            sub = SimpleNamespace(
                train=train.subset(np.flatnonzero(kept)), val=splits.val
            )  # never the test set
    out[removed] = np.arange(len(removed), dtype=np.float64) - len(removed)  # -R .. -1, first removed lowest
    if progress is not None:
        progress(rounds, rounds, f"removed {len(removed)} in {rounds} rounds")
    return out


def iterative_config(run: TrainedRun, splits: DatasetSplits, method: str, settings: dict, rule: str,
                     max_fraction: float, round_fraction: float = ROUND_FRACTION,
                     mislabel: np.ndarray | None = None) -> dict:  # fmt: skip
    """What determines an iterative usefulness: the run, the data, the attributor, the rule and rounds."""
    base_rule(rule)
    cfg = {
        "run": run.key,
        "train": examples_fingerprint(splits.train),
        "val": examples_fingerprint(splits.val),
        "method": method,
        "settings": dict(sorted(settings.items())),
        "rule": rule,
        "max_fraction": float(max_fraction),
        "round_fraction": float(round_fraction),
    }
    if mislabel is not None:
        cfg["mislabel"] = hashlib.sha256(
            np.ascontiguousarray(mislabel, dtype=np.float64).tobytes()
        ).hexdigest()[:16]
    return cfg


def compute_iterative_usefulness(
    run: TrainedRun,
    splits: DatasetSplits,
    method: str,
    settings: dict,
    rule: str,
    max_fraction: float,
    round_fraction: float = ROUND_FRACTION,
    mislabel: np.ndarray | None = None,
    first_scores: np.ndarray | None = None,
    workspace: Workspace | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """`iterative_usefulness` with the attributor `method(**settings)`, computed once and stored in
    `workspace` (kind "iterative_usefulness", one `usefulness.npy` `[N]`); reused when the config matches."""
    ws = require_workspace(workspace, "compute_iterative_usefulness")
    cfg = iterative_config(run, splits, method, settings, rule, max_fraction, round_fraction, mislabel)
    return ws.cached(
        ITERATIVE_KIND,
        cfg,
        lambda: iterative_usefulness(
            run,
            splits,
            rule,
            max_fraction,
            lambda r, s: fit_and_score(r, s, method, settings, ws),
            round_fraction,
            mislabel,
            first_scores,
            executor,
            progress,
        ),  # fmt: skip
    )


def run_rule_usefulness(
    run: TrainedRun,
    splits: DatasetSplits,
    scores: np.ndarray,
    method: str,
    settings: dict,
    rule: str,
    fraction: float | None,
    workspace: Workspace,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Usefulness `[N]` (higher = kept longer) of a run under any rule of `PRUNING_RULES` but "normalised" or
    of `ITERATIVE_RULES`, with what the rule needs computed (and cached in `workspace`) from the run: the
    own loss, the combined mislabel score (its out-of-fold probabilities: 15 retrainings, kind
    "oof_probs"), the iterative rounds up to `fraction` (required for an iterative rule).

    Args:
        scores: `[n_val, N]` the run's validation scores of `method(**settings)`, positive = helps.
    """
    from tda_explorer.evaluation.label_quality import combined_mislabel_score
    from tda_explorer.evaluation.mislabel import training_loss_scores
    from tda_explorer.evaluation.run_label_quality import cached_oof_probs

    base = base_rule(rule) if rule.startswith("iterative_") else rule
    labels = splits.train.labels.numpy()
    mislabel = None
    if base == "harm_mislabel":
        probs = cached_oof_probs(run, splits.train, workspace, executor=executor, progress=progress)
        mislabel = combined_mislabel_score(run, splits.train, probs)
    if base == rule:
        own_loss = training_loss_scores(run, splits.train).numpy() if rule == "harm_loss" else None
        return rule_usefulness(scores, rule, labels, own_loss=own_loss, mislabel=mislabel)
    if fraction is None:
        raise ConfigError(
            f"the iterative rule {rule!r} removes a fraction in rounds: give a fraction, not a threshold."
        )
    return compute_iterative_usefulness(
        run, splits, method, settings, rule, fraction, min(ROUND_FRACTION, fraction), mislabel, scores,
        workspace=workspace, executor=executor, progress=progress,
    )  # fmt: skip


def _save(folder: Path, useful: np.ndarray) -> None:
    save_array(folder, "usefulness", np.asarray(useful, dtype=np.float64))


def _load(folder: Path, meta: dict) -> np.ndarray:
    return load_array(folder / "usefulness.npy")


register_kind(
    ArtifactKind(
        ITERATIVE_KIND, files=("usefulness.npy",), save=_save, load=_load,
        recompute="run the iterative pruning rule again (`prune --rule iterative_...`)",
    )
)  # fmt: skip
