"""The mislabel and pruning benchmark tables check their targets from the stored numbers (no training)."""

from __future__ import annotations

import numpy as np

from benchmarks import mislabel, pruning
from benchmarks.console import t_interval


def _mis_row(name, aucs):
    seeds = [{"flip_seed": i, "auc": a, "recall_10": a - 0.1, "recall_20": 1.0} for i, a in enumerate(aucs)]
    return {
        "score": name,
        "per_seed": seeds,
        "dev": [],
        "auc": t_interval(aucs),
        "recall_10": t_interval([a - 0.1 for a in aucs]),
        "recall_20": (1.0, 1.0, 1.0),
        "seconds": None,
    }


def _mis_result(combo):
    rows = [
        _mis_row(mislabel.OWN_LOSS, [0.98, 0.97, 0.98]),
        _mis_row(mislabel.CLEANLAB, [0.97, 0.98, 0.97]),
        _mis_row(mislabel.NEW_COMBO, combo),
    ]
    setting = {"setting": "s", "flip_seeds": [0, 1, 2], "dev_seeds": [], "test_acc": 0.9, "rows": rows}
    setting["oof_seconds_per_repeat"] = 1.0
    machine = {"load_end": [1.0, 1.0, 1.0], "cpus": 2}
    return {"seeds": 3, "rule": ["a"], "repeats": 3, "folds": 5, "settings": [setting]} | {
        "wall_seconds": 1.0,
        "machine": machine,
    }


def test_mislabel_target_is_met_only_above_both_baselines():
    assert "met (0.9900" in mislabel.markdown(_mis_result([0.99, 0.99, 0.99]))
    assert "MISSED" in mislabel.markdown(_mis_result([0.96, 0.96, 0.99]))
    lo_hi = t_interval([1.0, 2.0, 3.0])
    assert lo_hi[0] == 2.0 and lo_hi[1] < 2.0 < lo_hi[2]


def _curve_row(name, acc):
    return {"rule": name, "acc": [[a, np.nan, np.nan] for a in acc]}


def test_pruning_targets_per_fraction():
    setting = {
        "noise": 0.1,
        "fractions": [0.0, 0.05, 0.1, 0.2],
        "best_attribution_rule": "trak · class_balanced",
        "rows": [
            _curve_row("random", [0.85, 0.85, 0.84, 0.84]),
            _curve_row(pruning.BASELINES[0], [0.85, 0.87, 0.89, 0.88]),
            _curve_row(pruning.BASELINES[1], [0.85, 0.86, 0.88, 0.89]),
            _curve_row("trak · class_balanced", [0.85, 0.88, 0.88, 0.90]),
        ],
    }
    lines = pruning.targets(setting)
    assert [line.endswith("met") for line in lines] == [True, False, True]
    clean = {**setting, "noise": 0.0}
    assert "met (above random at 5%, 10%, 20%" in pruning.targets(clean)[0]
