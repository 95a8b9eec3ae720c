"""Reviewing a training set: rank suspected mislabels, choose the examples to prune, build their tables.

These are the computations behind the app's Mislabels and Pruning pages, here so that the CLI (and
any script) gets the same answers without Streamlit:

- `mislabel_sources`: the named mislabel scores `[n_train]` of a run (higher = more suspicious): the
  own training loss (the no-attribution baseline) and the self-influence of every stored score artifact.
- `mislabel_ranking`: the most suspicious training examples, with their flags.
- `prune_table`: usefulness of each training example to the queries (mean score; positive = helps),
  the removal by fraction or threshold, and the export table of `store.exports` (status kept/removed).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from tda_explorer.attributors.scores import list_scores, load_scores
from tda_explorer.backend.usefulness import removal_mask
from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.evaluation.mislabel import training_loss_scores
from tda_explorer.evaluation.pruning import rule_usefulness
from tda_explorer.store import Workspace
from tda_explorer.store.exports import export_table
from tda_explorer.store.flags import FlagRecord
from tda_explorer.training.runs import TrainedRun

OWN_LOSS = "own training loss"


def mislabel_sources(run: TrainedRun, splits: DatasetSplits, workspace: Workspace) -> dict[str, np.ndarray]:
    """Named mislabel scores of a run, each float `[n_train]` (higher = more suspicious).

    Returns:
        `{"own training loss": ..., "self-influence · <method> (<key[:6]>)": ...}` for every stored
        score artifact of the run, newest first (the choices of the app's Mislabels page).
    """
    out = {OWN_LOSS: training_loss_scores(run, splits.train).numpy()}
    for meta in list_scores(workspace, run.key):
        result = load_scores(workspace, meta["config"])
        out[f"self-influence · {result.method} ({meta['key'][:6]})"] = result.self_influence
    return out


def mislabel_ranking(
    score: np.ndarray,
    train: ExampleSet,
    flags: Mapping[str, FlagRecord] | None = None,
    top: int = 20,
    hide_flagged: bool = False,
    flipped_ids: tuple[str, ...] | list[str] = (),
) -> list[dict]:
    """The `top` most suspicious training examples, most suspicious first.

    Args:
        score: `[n_train]`, higher = more suspicious (ties keep dataset order).
        train: the training set the score is over.
        flags: current flags of the run (id -> FlagRecord); flagged examples are marked (or hidden).
        top: rows returned.
        hide_flagged: leave out examples that are flagged already.
        flipped_ids: ids whose label was flipped on purpose (known truth), marked in the rows.

    Returns:
        Rows `{rank, id, label, class_name, score, flagged, suggested_label, note}` (+ `flipped` when
        `flipped_ids` is given).
    """
    flags = flags or {}
    flipped = set(flipped_ids)
    labels = train.labels.numpy()
    rows: list[dict] = []
    for i in np.argsort(-np.asarray(score, dtype=np.float64), kind="stable"):
        example_id = train.ids[int(i)]
        record = flags.get(example_id)
        is_flagged = bool(record and record.flagged)
        if hide_flagged and is_flagged:
            continue
        row = {
            "rank": len(rows) + 1,
            "id": example_id,
            "label": int(labels[i]),
            "class_name": str(train.class_names[int(labels[i])]) if train.class_names else "",
            "score": float(score[i]),
            "flagged": is_flagged,
            "suggested_label": record.suggested_label if record else None,
            "note": record.note if record else "",
        }
        if flipped:
            row["flipped"] = example_id in flipped
        rows.append(row)
        if len(rows) >= top:
            break
    return rows


def prune_table(
    scores: np.ndarray,
    train: ExampleSet,
    flags: Mapping[str, FlagRecord] | None = None,
    fraction: float | None = None,
    threshold: float | None = None,
    rule: str = "sum",
    self_influence: np.ndarray | None = None,
    own_loss: np.ndarray | None = None,
) -> pd.DataFrame:
    """The export table of a pruning choice, as the app's Pruning page exports it.

    Args:
        scores: `[n_query, n_train]` (validation queries, positive = helps); usefulness = mean over rows.
        train: the training set (columns of `scores`).
        flags: current flags of the run, copied into the table.
        fraction / threshold: remove the `fraction` least useful examples, or those whose usefulness is
            below `threshold` (exactly one; see `backend.usefulness.removal_mask`).
        rule: `evaluation.pruning.rule_usefulness` rule ("sum" = the mean score itself; the others rank
            within each class, so `score` and a threshold are then within-class ranks in [0, 1]);
            `self_influence` `[n_train]` for "normalised", `own_loss` `[n_train]` for "harm_loss".

    Returns:
        `store.exports.export_table`: one row per training example, `score` = usefulness and `status`
        "kept" or "removed".
    """
    useful = rule_usefulness(scores, rule, train.labels.numpy(), self_influence, own_loss)
    removed = removal_mask(useful, fraction=fraction, threshold=threshold)
    return export_table(train.ids, train.labels.numpy(), train.class_names, useful, removed, flags)
