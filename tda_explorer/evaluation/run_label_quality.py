"""A run's mislabel scores beyond self-influence, as the app and the CLI show them.

The combined score and cleanlab's both need out-of-fold probabilities: r x K retrainings of the run's
recipe (`label_quality.out_of_fold_probs`, 3 x 5 = 15 by default). They are cached as an artifact of kind
"oof_probs" (one `probs.npy`, `[N, C]` float64), keyed by the run, the training set's ids and labels, and
the fold settings, so the app and the CLI compute them once per run.

Scores: `[N]` float64, higher = more suspicious; they read the given labels and the models, never any
record of which labels were flipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tda_explorer.data.example_set import ExampleSet, examples_fingerprint
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation.label_quality import cleanlab_scores, combined_mislabel_score, out_of_fold_probs
from tda_explorer.store import Workspace, load_array, save_array
from tda_explorer.store.kinds import ArtifactKind, register_kind
from tda_explorer.training.runs import TrainedRun

#: Out-of-fold setting of the app and the CLI: K folds, r repeats (r x K retrainings).
N_FOLDS, REPEATS = 5, 3

COMBINED = "mislabel score (out-of-fold margin + own loss + kNN labels)"
CLEANLAB = "cleanlab (out-of-fold probabilities)"


def _save(folder: Path, probs: np.ndarray) -> None:
    save_array(folder, "probs", np.asarray(probs, dtype=np.float64))


def _load(folder: Path, meta: dict) -> np.ndarray:
    return load_array(folder / "probs.npy")


OOF_PROBS = register_kind(
    ArtifactKind(
        "oof_probs", files=("probs.npy",), save=_save, load=_load,
        recompute="compute the combined mislabel score again (Mislabels page, or `mislabels --score combined`)",
    )
)  # fmt: skip


def oof_config(run: TrainedRun, train: ExampleSet, n_folds: int = N_FOLDS, repeats: int = REPEATS) -> dict:
    """What determines the out-of-fold probabilities: the run, the training examples and labels, the folds."""
    return {"run": run.key, "train": examples_fingerprint(train), "n_folds": n_folds, "repeats": repeats}


def has_oof_probs(run: TrainedRun, train: ExampleSet, ws: Workspace) -> bool:
    """Whether the run's out-of-fold probabilities are already in the workspace."""
    return ws.exists(OOF_PROBS.name, oof_config(run, train))


def cached_oof_probs(run: TrainedRun, train: ExampleSet, ws: Workspace, **retraining) -> np.ndarray:
    """Out-of-fold probabilities `[N, C]` (REPEATS x N_FOLDS retrainings), computed once per run and cached.

    `retraining`: how the retrainings run, passed on to `out_of_fold_probs` (`executor=`, `progress=`).
    """
    return ws.cached(
        OOF_PROBS.name,
        oof_config(run, train),
        lambda: out_of_fold_probs(run, train, N_FOLDS, repeats=REPEATS, **retraining),
    )


def label_quality_scores(run: TrainedRun, train: ExampleSet, oof_probs: np.ndarray) -> dict[str, np.ndarray]:
    """Named scores `[N]` (higher = more suspicious): the combined mislabel score and, when cleanlab is
    installed, cleanlab's label-quality score on the same out-of-fold probabilities."""
    out = {COMBINED: combined_mislabel_score(run, train, oof_probs)}
    try:
        out[CLEANLAB] = cleanlab_scores(oof_probs, train.labels)
    except ConfigError:  # pragma: no cover - cleanlab is an optional extra (not installed)
        pass
    return out
