"""Attribution scores of a run, the package's main use case: computed once per setting, stored, reused.

Artifact kind "scores", keyed by {run key, attributor config, query split}. Contents:
`scores.npy` float32 `[n_query, n_train]` (positive = helps), `self_influence.npy` float32
`[n_train]`, and in the metadata the query and train ids and the wall seconds of fit/score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tda_explorer.attributors.base import make_attributor
from tda_explorer.data.example_set import DatasetSplits
from tda_explorer.errors import ArtifactError, ConfigError
from tda_explorer.models.text_cache import states_stored_in
from tda_explorer.store import Workspace, default_workspace, load_array, save_arrays
from tda_explorer.training.runs import TrainedRun
from tda_explorer.training.trainer import Progress

QUERY_SPLITS = ("test", "val")


@dataclass
class ScoreResult:
    """Scores of one attributor on one run.

    Attributes:
        scores: float32 `[n_query, n_train]`, rows follow `query_ids`, columns `train_ids`; positive = helps.
        self_influence: float32 `[n_train]` (NaN for methods whose self-influence is not computed implicitly,
            `Attributor.cached_self_influence`).
        seconds: wall seconds of fit + score + self-influence when it was computed.
    """

    method: str
    config: dict
    scores: np.ndarray
    self_influence: np.ndarray
    query_ids: list[str]
    train_ids: list[str]
    seconds: float
    key: str

    def top_k(self, query_index: int, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Train positions of the k most supporting (largest, best first) and k most opposing (smallest,
        most negative first) examples for one query: two `int64 [k]` arrays."""
        row = self.scores[query_index]
        k = min(k, len(row))
        support = np.argpartition(-row, k - 1)[:k]
        oppose = np.argpartition(row, k - 1)[:k]
        return support[np.argsort(-row[support])], oppose[np.argsort(row[oppose])]


def score_config(run: TrainedRun, method: str, settings: dict, split: str) -> dict:
    """What keys a score artifact: the run, a hash of its weights (`TrainedRun.fingerprint`: a run object
    whose key was reused for other weights never gets the other weights' scores), the method, the split."""
    return {
        "run": run.key,
        "weights": run.fingerprint(),
        "method": {"method": method, **settings},
        "queries": split,
    }


def prepared_attributor(
    method: str, settings: dict, splits: DatasetSplits, ws: Workspace, progress: Progress | None = None
):
    """`method(**settings)` ready to fit: methods that cache artifacts get `ws` (LoRA ensembles, TRAK's and
    influence's held-out signal), those that hold the validation split out get `splits.val`."""
    attributor = make_attributor(method, progress=progress, **settings)
    if getattr(attributor, "workspace", False) is None:
        attributor.workspace = ws
    if getattr(attributor, "validation", False) is None:
        attributor.validation = splits.val
    return attributor


def compute_scores(
    run: TrainedRun,
    splits: DatasetSplits,
    method: str,
    settings: dict | None = None,
    split: str = "test",
    workspace: Workspace | None = None,
    progress: Progress | None = None,
    on_fitted=None,
) -> ScoreResult:
    """Scores of `method` (registry name) for the `split` queries against the training set; cached.

    `on_fitted(attributor)`, if given, receives the fitted attributor when the scores are computed (not when
    they are reused), e.g. to score other queries without fitting again."""
    if split not in QUERY_SPLITS:
        raise ConfigError(f"query split {split!r} is not one of {QUERY_SPLITS}.")
    ws = default_workspace(workspace)
    settings = dict(settings or {})
    attributor = prepared_attributor(method, settings, splits, ws, progress)
    cfg = score_config(run, method, attributor.settings.config(), split)

    def compute() -> tuple[dict[str, np.ndarray], dict]:
        queries = getattr(splits, split)
        start = time.perf_counter()
        with states_stored_in(ws):  # a text model's frozen states, reused by the next process
            attributor.fit(run, splits.train)
            if on_fitted is not None:
                on_fitted(attributor)
            scores = attributor.score(queries).numpy().astype(np.float32)
        if attributor.cached_self_influence:
            self_inf = attributor.self_influence().numpy().astype(np.float32)
        else:  # e.g. unrolled: one reverse pass per training example; not run implicitly
            self_inf = np.full(len(splits.train), np.nan, dtype=np.float32)
        seconds = time.perf_counter() - start
        extra = {"query_ids": list(queries.ids), "train_ids": list(splits.train.ids), "seconds": seconds}
        extra.update(getattr(attributor, "artifact_extra_", {}))  # e.g. ensemble members' seeds and costs
        return {"scores": scores, "self_influence": self_inf}, extra

    return ws.cached(
        "scores",
        cfg,
        compute,
        save=lambda d, value: save_arrays(d, value[0]),
        load=lambda _path, _meta: load_scores(ws, cfg),
        extra=lambda value: value[1],
    )


def load_scores(ws: Workspace, cfg: dict) -> ScoreResult:
    """A stored ScoreResult by its config.

    Raises:
        ArtifactError: Absent, damaged (checksum), or inconsistent: metadata without ids, or a
            `scores.npy` / `self_influence.npy` whose shape does not match the stored ids (the message
            says which folder to delete to recompute it).
    """
    path = ws.open("scores", cfg)
    extra = ws.meta("scores", path.name).get("extra")
    fix = f"delete the folder {path} and compute the scores again (`tda-explorer attribute ...` or the app)"
    if not isinstance(extra, dict) or any(k not in extra for k in ("query_ids", "train_ids", "seconds")):
        raise ArtifactError(f"scores artifact {path.name}: meta.json lacks the query/train ids; {fix}.")
    query_ids, train_ids = extra["query_ids"], extra["train_ids"]
    scores = load_array(path / "scores.npy")
    self_inf = load_array(path / "self_influence.npy")
    for name, arr, want in (
        ("scores.npy", scores, (len(query_ids), len(train_ids))),
        ("self_influence.npy", self_inf, (len(train_ids),)),
    ):
        if arr.shape != want or arr.dtype.kind != "f":
            raise ArtifactError(
                f"scores artifact {path.name}: {name} has shape {list(arr.shape)} ({arr.dtype}) but its "
                f"meta.json lists {len(query_ids)} queries x {len(train_ids)} training examples "
                f"(expected float {list(want)}); {fix}."
            )
    return ScoreResult(
        method=cfg["method"]["method"],
        config=cfg,
        scores=scores,
        self_influence=self_inf,
        query_ids=query_ids,
        train_ids=train_ids,
        seconds=float(extra["seconds"]),
        key=path.name,
    )


def list_scores(ws: Workspace, run_key: str) -> list[dict]:
    """Metadata of every stored score artifact of a run, newest first."""
    return [m for m in ws.list("scores") if m["config"].get("run") == run_key]
