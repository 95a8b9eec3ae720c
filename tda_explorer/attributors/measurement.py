"""What a score explains: the query's loss at its true label, or at the class the model predicted.

The attributors measure a query by its loss at the query's label (`score[q, t] > 0`: up-weighting
training example t lowers that loss, see the sign convention in `tda_explorer.attributors`). For a
misclassified query the user usually asks "what made the model predict this?", i.e. the loss at the
*predicted* class: positive = the training example pushes the model toward what it predicted. That is the
same attributor with the query's label replaced by the prediction, so no attributor changes; this module
computes those scores (only the misclassified queries' rows differ) and caches them as an artifact of kind
`PREDICTED_KIND`, keyed by the true-label score artifact and the predictions used.

    measurement="predicted"   scores[q, t] = helps the loss of the predicted class of q (default in the app)
    measurement="true_label"  scores[q, t] = helps the loss of q's true label (what `compute_scores` stores)
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from tda_explorer.attributors.base import attributor_from_config
from tda_explorer.attributors.scores import ScoreResult
from tda_explorer.data import DatasetSplits
from tda_explorer.errors import ConfigError
from tda_explorer.store import Workspace, load_array, save_array
from tda_explorer.store.kinds import ArtifactKind, register_kind
from tda_explorer.training import TrainedRun
from tda_explorer.training.trainer import Progress

MEASUREMENTS = ("predicted", "true_label")
PREDICTED_KIND = register_kind(
    ArtifactKind(
        "scores_predicted",
        files=("scores.npy",),
        recompute="open the attribution at the predicted class again (the app's Attribution page or "
        "`tda-explorer explain ... --measurement predicted`)",
    )
).name


def _config(base: ScoreResult, predicted: np.ndarray) -> dict:
    digest = hashlib.sha256(np.ascontiguousarray(predicted, dtype=np.int64).tobytes()).hexdigest()[:16]
    return {"scores": base.key, "predicted_sha256": digest, "measurement": "predicted"}


def scores_for_measurement(
    run: TrainedRun,
    splits: DatasetSplits,
    base: ScoreResult,
    measurement: str,
    predicted: np.ndarray,
    workspace: Workspace,
    progress: Progress | None = None,
    attributor=None,
) -> ScoreResult:
    """`base` (true-label scores of the test queries) re-expressed for `measurement`.

    Args:
        base: stored test-query scores (`compute_scores(..., split="test")`).
        measurement: "true_label" (returns `base`) or "predicted".
        predicted: `[n_query]` int predicted class of each of `base.query_ids` (the app's prediction table).
        workspace: where the predicted-class scores are cached (kind `PREDICTED_KIND`).
        attributor: the attributor already fitted with `base`'s method and settings (else it is fitted here).

    Returns: a ScoreResult whose rows are the predicted-class scores: the rows of correctly predicted queries
    are `base`'s, the misclassified queries' rows are recomputed with their label set to the prediction.
    """
    if measurement not in MEASUREMENTS:
        raise ConfigError(f"measurement {measurement!r} is not one of {MEASUREMENTS}.")
    if measurement == "true_label":
        return base
    predicted = np.asarray(predicted, dtype=np.int64)
    test = splits.test
    if len(predicted) != len(base.query_ids):
        raise ConfigError(f"{len(predicted)} predictions for {len(base.query_ids)} queries.")
    cfg = _config(base, predicted)

    def compute() -> tuple[np.ndarray, int]:  # ([n_query, n_train] float32 scores, rows recomputed)
        scores = base.scores.copy()
        positions = test.index_of(list(base.query_ids))
        true = test.labels.numpy()[positions]
        wrong = np.flatnonzero(true != predicted)
        if len(wrong):
            queries = test.subset(positions[wrong]).with_labels(torch.as_tensor(predicted[wrong]))
            fitted = attributor
            if fitted is None:
                fitted = attributor_from_config(base.config["method"], progress=progress)
                if getattr(fitted, "workspace", False) is None:
                    fitted.workspace = workspace
                fitted.fit(run, splits.train)
            scores[wrong] = fitted.score(queries).numpy().astype(np.float32)
        return scores, int(len(wrong))

    stored, key = workspace.cached(
        PREDICTED_KIND,
        cfg,
        compute,
        save=lambda d, value: save_array(d, "scores", value[0]),
        load=lambda path, _meta: (load_array(path / "scores.npy"), path.name),
        extra=lambda value: {"n_recomputed": value[1]},
    )
    return ScoreResult(
        method=base.method,
        config={**base.config, "measurement": "predicted"},
        scores=stored,
        self_influence=base.self_influence,
        query_ids=base.query_ids,
        train_ids=base.train_ids,
        seconds=base.seconds,
        key=key,
    )


def predicted_classes(run: TrainedRun, splits: DatasetSplits) -> np.ndarray:
    """`[n_test]` predicted class of each test example by the run's first seed (the app's prediction)."""
    return run.predict(splits.test).numpy().argmax(1)


def compute_test_scores(
    run: TrainedRun,
    splits: DatasetSplits,
    method: str,
    settings: dict | None,
    workspace: Workspace,
    progress: Progress | None = None,
) -> tuple[ScoreResult, ScoreResult]:
    """The test-query scores for both measurements with one fit: `(true_label, predicted)` (both cached).
    The predicted-class rows reuse the attributor `compute_scores` fitted, so they cost one scoring pass."""
    from tda_explorer.attributors.scores import compute_scores

    fitted: list = []
    base = compute_scores(run, splits, method, settings, "test", workspace, progress, on_fitted=fitted.append)
    predicted = predicted_classes(run, splits)[splits.test.index_of(list(base.query_ids))]
    pred = scores_for_measurement(
        run, splits, base, "predicted", predicted, workspace, progress, fitted[0] if fitted else None
    )
    return base, pred
