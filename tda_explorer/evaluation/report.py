"""Evaluation table for one run: LDS (with bootstrap interval), mislabel AUC and time per stored attributor.

Reads what is already computed (score artifacts of the run and, if present, an LDS ground truth for
the run's data and configs); computes nothing expensive itself except the LDS scores (a matmul and
a rank correlation per attributor).
"""

from __future__ import annotations

import numpy as np

from tda_explorer.attributors.scores import list_scores, load_scores
from tda_explorer.data.example_set import DatasetSplits
from tda_explorer.evaluation.lds import LDSTruth, lds_score
from tda_explorer.evaluation.mislabel import mislabel_metrics, training_loss_scores
from tda_explorer.store import Workspace
from tda_explorer.training.runs import TrainedRun


def evaluation_rows(
    run: TrainedRun, splits: DatasetSplits, workspace: Workspace, truth: LDSTruth | None = None
) -> list[dict]:
    """One row per stored test-query score artifact of `run`.

    Columns: method, key, seconds (fit + score), lds, lds_low, lds_high (NaN without `truth`),
    mislabel_auc (NaN when no label noise was injected). A last row "own training loss" gives the
    no-attribution mislabel baseline.
    """
    flipped = (
        np.isin(np.asarray(splits.train.ids), np.asarray(splits.flipped_ids)) if splits.flipped_ids else None
    )
    rows = []
    for meta in list_scores(workspace, run.key):
        if meta["config"]["queries"] != "test":
            continue
        result = load_scores(workspace, meta["config"])
        row = {"method": result.method, "key": result.key, "seconds": result.seconds}
        row.update({"lds": np.nan, "lds_low": np.nan, "lds_high": np.nan, "mislabel_auc": np.nan})
        if truth is not None and list(truth.query_ids) == result.query_ids:
            lds = lds_score(result.scores, truth)
            row.update({"lds": lds.mean, "lds_low": lds.ci_low, "lds_high": lds.ci_high})
        if flipped is not None and flipped.any():
            row["mislabel_auc"] = mislabel_metrics(result.self_influence, flipped).auc
        rows.append(row)
    if flipped is not None and flipped.any():
        baseline = training_loss_scores(run, splits.train).numpy()
        rows.append(
            {"method": "own training loss", "key": "", "seconds": np.nan, "lds": np.nan, "lds_low": np.nan,
             "lds_high": np.nan, "mislabel_auc": mislabel_metrics(baseline, flipped).auc}
        )  # fmt: skip
    return rows
