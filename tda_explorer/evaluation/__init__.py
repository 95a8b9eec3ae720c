"""Evaluations of attribution methods: LDS, mislabel detection, pruning curves, counterfactual removal.

Sign convention throughout: positive score = the training example helps the query (lowers its loss).
"""

from __future__ import annotations

from tda_explorer.backend.stats import bootstrap_mean_ci, spearman_rows
from tda_explorer.evaluation.counterfactual import CounterfactualResult, counterfactual_test
from tda_explorer.evaluation.lds import (
    LDSConfig,
    LDSResult,
    LDSTruth,
    compute_lds_truth,
    lds_groups,
    lds_score,
    lds_truth_config,
    load_lds_truth,
    subset_masks,
)
from tda_explorer.evaluation.mislabel import (
    MislabelReport,
    MislabelResult,
    mislabel_experiment,
    mislabel_metrics,
    recall_at_fraction,
    training_loss_scores,
)
from tda_explorer.evaluation.pruning import (
    PruningCurve,
    best_pruning_rule,
    compute_pruning_curve,
    pruning_curve,
    pruning_curves,
    pruning_usefulness,
    stored_pruning_curve,
    usefulness_from_scores,
)

__all__ = [
    "CounterfactualResult",
    "LDSConfig",
    "LDSResult",
    "LDSTruth",
    "MislabelReport",
    "MislabelResult",
    "PruningCurve",
    "best_pruning_rule",
    "bootstrap_mean_ci",
    "compute_lds_truth",
    "compute_pruning_curve",
    "counterfactual_test",
    "lds_groups",
    "lds_score",
    "lds_truth_config",
    "load_lds_truth",
    "mislabel_experiment",
    "mislabel_metrics",
    "pruning_curve",
    "pruning_curves",
    "pruning_usefulness",
    "recall_at_fraction",
    "spearman_rows",
    "stored_pruning_curve",
    "subset_masks",
    "training_loss_scores",
    "usefulness_from_scores",
]
