"""Sort the training set by similarity to one example (FiftyOne's "sort by similarity").

`most_similar(run, splits, example_id, k)` ranks the training examples by the cosine similarity of their
features to the example's (train or test), under the run's first model:
- representation "penultimate": the model's penultimate features (`model.features`);
- representation "gradients": per-example loss gradients of the last layer ("head", at the example's own
  label), projected to `GRADIENT_DIM` dims by a seeded count sketch ("sjlt"; inner products preserved in
  expectation). The head, not all parameters: on the MNIST MLP all-parameter features took minutes on 2
  loaded cores, which a click should not cost.
Features are `scale.featurize` artifacts (computed once per model and example set, shared with other users of
the workspace); the search is FAISS exact inner product over unit rows (`backend.knn.FaissTopK("flat",
normalize=True)`), i.e. cosine. Similarity in [-1, 1], larger = more alike; the example itself is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tda_explorer.backend.knn import FaissTopK
from tda_explorer.data.example_set import DatasetSplits
from tda_explorer.errors import ConfigError
from tda_explorer.maps import locate_examples
from tda_explorer.scale.featurize import FeatureConfig, Features, featurize
from tda_explorer.store import Workspace
from tda_explorer.training.executor import Executor, LocalExecutor
from tda_explorer.training.runs import TrainedRun
from tda_explorer.training.trainer import Progress

REPRESENTATIONS = ("penultimate", "gradients")
GRADIENT_DIM = 512


@dataclass(frozen=True)
class Similar:
    """The training examples most similar to one example.

    Attributes:
        query_id: the example; representation: "penultimate" or "gradients".
        positions: int64 `[k]` training-set positions, most similar first.
        ids: their ids; similarities: float32 `[k]` cosine similarities (same order).
    """

    query_id: str
    representation: str
    positions: np.ndarray
    ids: tuple[str, ...]
    similarities: np.ndarray


def feature_config(representation: str) -> FeatureConfig:
    """The featurization behind a representation (see the module docstring)."""
    if representation == "penultimate":
        return FeatureConfig(kind="repr", normalize=True)
    if representation == "gradients":
        return FeatureConfig(kind="grad", params="head", projection_dim=GRADIENT_DIM, projection_kind="sjlt")
    raise ConfigError(f"similarity representation {representation!r} is not one of {REPRESENTATIONS}.")


def similarity_features(
    run: TrainedRun,
    splits: DatasetSplits,
    workspace: Workspace,
    representation: str = "penultimate",
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> tuple[Features, Features]:
    """`(train, test)` features `[n, d]` of the run's first model (cached artifacts, see `scale.featurize`)."""
    config = feature_config(representation)
    state = run.checkpoints[run.seeds[0]][-1].state
    executor = executor or LocalExecutor(1)
    return tuple(
        featurize(run.model_config, state, es, config, workspace, executor, progress)
        for es in (splits.train, splits.test)
    )


def most_similar(
    run: TrainedRun,
    splits: DatasetSplits,
    example_id: str,
    workspace: Workspace,
    k: int = 16,
    representation: str = "penultimate",
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> Similar:
    """The `k` training examples most similar (cosine) to `example_id` (a train or test id), itself excluded.

    ConfigError for an unknown id, representation or a k < 1.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}.")
    ((es, pos),) = locate_examples(splits, [example_id])
    train_f, test_f = similarity_features(run, splits, workspace, representation, executor, progress)
    in_train = es is splits.train
    query = (train_f if in_train else test_f).array[pos : pos + 1]
    n = len(train_f.array)
    top = FaissTopK("flat", normalize=True).fit(train_f.array).search(query, min(n, k + int(in_train)))
    idx, sims = top.indices[0].numpy(), top.values[0].numpy()
    keep = idx != pos if in_train else np.ones(len(idx), bool)
    idx, sims = idx[keep][:k], sims[keep][:k]
    return Similar(
        example_id, representation, idx.astype(np.int64), tuple(splits.train.ids[i] for i in idx), sims
    )
