"""Teacher-labelled AirRep data: group labels predicted by a teacher attributor instead of retraining.

For M random training subsets S_j (drawn as in `data.training_subset_masks`, checked disjoint from the
LDS evaluation subsets) and label queries x_q, the teacher's first-order prediction of what training on
S_j (= removing its complement) does to x_q's loss is, up to a per-query constant,

    e(x_q, S_j) = sum_{i in S_j} s[q, i]        `[n_query, M]`, float64

where `s` `[n_query, N]` are the teacher's scores in the package's sign (s > 0: i helps x_q, the predicted
increase of x_q's loss when i is removed), so `-e` is the predicted query loss after training on S_j
(relative). The labels are `normalise_labels(-e)`: per query, z-scored over the M subsets and clipped to
+-10, exactly as the retrained labels (positive = S_j helps x_q more than the average subset). Nothing is
retrained: the cost is the teacher's fit and scores on the label queries plus one `[n_query, N] x [N, M]`
product, so M can be in the thousands.

The teacher is any fitted attributor (its `score(queries)`, e.g. TRAK over the run's seeds or `unrolled`)
or a precomputed score matrix. A student trained on these labels can at best reproduce the teacher's
group ranking; its group LDS against real retraining is bounded by the teacher's own (plus whatever the
encoder's smoothing adds or loses).

Artifact kind "airrep_teacher" (through `Workspace.cached`), keyed by the training set's and label
queries' fingerprints, the subsets (`n_subsets`, `alpha`, `subset_seed`) and `teacher_key` (what
identifies the teacher's scores: method, settings, run key, ...); the teacher's seconds are recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tda_explorer.attributors.airrep.data import (
    AirRepData,
    AirRepDataConfig,
    check_disjoint_subsets,
    check_queries,
    data_from_arrays,
    evaluation_masks,
    examples_fingerprint,
    normalise_labels,
    training_subset_masks,
)
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.store import Workspace, load_array, require_workspace, save_arrays
from tda_explorer.store.kinds import ArtifactKind, register_kind

TEACHER_KIND = "airrep_teacher"
_FILES = ("masks.npy", "losses.npy", "labels.npy", "train_ids.npy", "query_ids.npy")
_CHUNK = 1024  # subsets per matrix product (bounds the float32 copy of the masks)


def teacher_effects(scores: np.ndarray | torch.Tensor, masks: np.ndarray) -> np.ndarray:
    """`e[q, j] = sum_{i in S_j} scores[q, i]`: scores `[n_query, N]`, masks bool `[M, N]` -> float64 `[n_query, M]`."""
    s = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    masks = np.asarray(masks, dtype=bool)
    if s.ndim != 2 or masks.ndim != 2 or s.shape[1] != masks.shape[1]:
        raise ConfigError(
            f"teacher scores {list(s.shape)} and subset masks {list(masks.shape)} must be [n_query, N] and [M, N]."
        )
    if not torch.isfinite(s).all():
        raise ConfigError("the teacher's scores have NaN or infinite entries.")
    parts = [
        (s @ torch.from_numpy(masks[a : a + _CHUNK]).double().T).numpy() for a in range(0, len(masks), _CHUNK)
    ]
    return np.concatenate(parts, axis=1) if parts else np.zeros((s.shape[0], 0))


def teacher_config(
    train: ExampleSet, queries: ExampleSet, config: AirRepDataConfig, teacher_key: dict
) -> dict:
    """The config dict that keys an "airrep_teacher" artifact."""
    return {
        "train": {"fingerprint": examples_fingerprint(train), "n": len(train)},
        "queries": {"fingerprint": examples_fingerprint(queries), "n": len(queries)},
        "target": "teacher",
        "teacher": teacher_key,
        **{k: v for k, v in config.key_dict().items() if k != "seeds"},
    }


def teacher_airrep_data(
    teacher: np.ndarray | torch.Tensor | Callable[[], np.ndarray | torch.Tensor],
    train: ExampleSet,
    queries: ExampleSet,
    teacher_key: dict,
    config: AirRepDataConfig | None = None,
    *,
    workspace: Workspace | None = None,
) -> AirRepData:
    """Teacher-labelled AirRep data (see the module docstring), cached as "airrep_teacher".

    Args:
        teacher: the teacher's scores `[len(queries), len(train)]` on the label queries (our sign: positive
            = helps), or a function returning them (called only when the artifact is not cached yet; e.g.
            fitting and scoring an attributor, whose name and settings the caller puts in `teacher_key`).
        train: the training set the subsets are drawn from (N examples).
        queries: label queries (held out from `train`; never the evaluation queries).
        teacher_key: what identifies the teacher's scores (e.g. `{"run": run.key, "method": ...}`).
        config: the subsets (`n_subsets`, `alpha`, `subset_seed`; `seeds` and `shard_size` unused).
        workspace: where the artifact is cached (required).

    Returns:
        AirRepData with `masks [M, N]`, `losses = -e.T [M, n_query]` (predicted relative query loss),
        `seed_losses = losses[:, None]`, `labels [n_query, M]`.
    """
    config = config or AirRepDataConfig()
    check_queries(train, queries)
    ws = require_workspace(workspace, "teacher_airrep_data")
    n = len(train)
    masks = training_subset_masks(n, config)
    check_disjoint_subsets(masks, evaluation_masks(n, config))

    seconds = [0.0]  # getting the teacher's scores (recorded as `AirRepData.seconds`)

    def compute() -> dict[str, np.ndarray]:
        start = time.perf_counter()
        scores = teacher() if callable(teacher) else teacher
        seconds[0] += time.perf_counter() - start
        if tuple(np.shape(scores)) != (len(queries), n):
            raise ConfigError(
                f"teacher scores have shape {list(np.shape(scores))}, expected [{len(queries)}, {n}] "
                "(label queries x training examples)."
            )
        losses = -teacher_effects(scores, masks).T
        return {
            "masks": masks,
            "losses": losses,
            "labels": normalise_labels(losses),
            "train_ids": np.asarray(train.ids, dtype=str),
            "query_ids": np.asarray(queries.ids, dtype=str),
        }

    def load(path: Path, meta: dict) -> AirRepData:
        return data_from_arrays({f[:-4]: load_array(path / f) for f in _FILES}, path, meta, config)

    cfg = teacher_config(train, queries, config, teacher_key)
    return ws.cached(TEACHER_KIND, cfg, compute, load=load, extra=lambda _v: {"seconds": seconds[0]})


register_kind(
    ArtifactKind(
        TEACHER_KIND,
        files=_FILES,
        save=save_arrays,
        recompute="make the teacher-labelled AirRep data again (`teacher_airrep_data`, cached by config)",
    )
)
