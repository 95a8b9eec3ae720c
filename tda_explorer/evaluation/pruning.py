"""Pruning curves: remove the k% least useful training examples, retrain, and compare with random removal.

Usefulness is `[n_train]`, higher = more useful to held-out data; `usefulness_from_scores` averages a score
matrix over validation queries (`backend.usefulness.usefulness`; positive score = helps, so the most
harmful examples have the lowest mean and go first). Removals are nested: the examples removed at k% are also removed at every larger k, for
the method (by usefulness, lowest first) and for the random baseline (one seeded permutation).

`compute_pruning_curve` is the cached form (artifact kind "pruning_curve", keyed by a digest of the
usefulness, the data fingerprints, model, training, fractions and seeds) that the app and the CLI share;
`stored_pruning_curve` returns it only when already computed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tda_explorer.backend.usefulness import usefulness as mean_usefulness
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.evaluation._common import (
    as_float64,
    check_fractions,
    check_int,
    check_seeds,
    cross_entropy,
    fingerprint,
)
from tda_explorer.models import ModelConfig
from tda_explorer.store import Workspace, load_array, require_workspace, save_array
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.executor import Executor
from tda_explorer.training.runs import retrain_on_subsets
from tda_explorer.training.trainer import Progress

DEFAULT_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
PRUNING_KIND = "pruning_curve"
_CURVE_ARRAYS = ("method_acc", "random_acc", "method_loss", "random_loss")


def usefulness_from_scores(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    """Usefulness to a validation set: `scores.mean(0)`, float64 `[n_train]` (higher = more useful).

    The package's one definition, `backend.usefulness.usefulness`, after a shape check.

    Args:
        scores: `[n_val, n_train]`, positive = the training example helps the validation example.
    """
    return mean_usefulness(as_float64(scores, "scores", (None, None)))


@dataclass(frozen=True, eq=False)
class PruningCurve:
    """Test accuracy and loss after pruning, per removed fraction and retraining seed.

    Attributes:
        fractions: removed fractions k, `[K]`.
        n_removed: examples removed at each fraction, `[K]`.
        seeds: retraining seeds, `[R]`.
        method_acc, random_acc: float64 `[K, R]` test accuracy after removing by usefulness / at random.
        method_loss, random_loss: float64 `[K, R]` mean test cross-entropy (nats).
        removal_order: training ids, least useful first (the method removes a prefix of it).
    """

    fractions: tuple[float, ...]
    n_removed: tuple[int, ...]
    seeds: tuple[int, ...]
    method_acc: np.ndarray
    random_acc: np.ndarray
    method_loss: np.ndarray
    random_loss: np.ndarray
    removal_order: tuple[str, ...]

    def table(self) -> list[dict]:
        """One row per fraction: fraction, n_removed, mean/std over seeds of accuracy and loss (to plot)."""
        rows = []
        for i, (f, k) in enumerate(zip(self.fractions, self.n_removed, strict=True)):
            row: dict = {"fraction": f, "n_removed": k}
            for name in ("method_acc", "random_acc", "method_loss", "random_loss"):
                values = getattr(self, name)[i]
                row[name] = float(values.mean())
                row[f"{name}_std"] = float(values.std())
            rows.append(row)
        return rows


def pruning_curve(
    usefulness: torch.Tensor | np.ndarray,
    train: ExampleSet,
    test: ExampleSet,
    model_config: ModelConfig,
    train_config: TrainConfig,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0,),
    random_seed: int = 0,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> PruningCurve:
    """Retrain without the least useful `round(k * N)` examples for each k, and without as many random ones.

    Args:
        usefulness: `[n_train]`, higher = more useful (ties broken by position, stably).
        train, test: training set and the set accuracy is measured on.
        model_config, train_config: how the models are retrained.
        fractions: removed fractions in [0, 1).
        seeds: retraining seeds; every mask is trained with each.
        random_seed: seed of the random-removal permutation (`numpy.random.default_rng(random_seed)`).
        executor, progress: run the retrainings and report `(done, total, msg)`.

    Returns:
        PruningCurve with accuracies `[K, R]` for the method and the random baseline.
    """
    n = len(train)
    use = as_float64(usefulness, "usefulness", (n,))
    fractions = check_fractions(fractions, "pruning fractions")
    seeds = check_seeds(seeds)
    random_seed = check_int(random_seed, "random_seed")
    n_removed = tuple(round(f * n) for f in fractions)
    if max(n_removed) >= n:
        raise ConfigError(
            f"removing {max(n_removed)} of {n} examples leaves none to train on; lower the fractions."
        )
    order = np.argsort(use, kind="stable")
    perm = np.random.default_rng(random_seed).permutation(n)
    masks = np.ones((2 * len(fractions), n), dtype=bool)
    for i, k in enumerate(n_removed):
        masks[i, order[:k]] = False
        masks[len(fractions) + i, perm[:k]] = False
    unique, inverse = np.unique(masks, axis=0, return_inverse=True)  # k = 0 appears twice: train it once
    logits = retrain_on_subsets(model_config, train_config, train, unique, seeds, test, executor, progress)
    logits = logits[torch.from_numpy(inverse.reshape(-1))]
    acc = (logits.argmax(-1) == test.labels).double().mean(-1).numpy()
    loss = cross_entropy(logits, test.labels).mean(-1).numpy()
    k = len(fractions)
    return PruningCurve(
        fractions=fractions,
        n_removed=n_removed,
        seeds=seeds,
        method_acc=acc[:k],
        random_acc=acc[k:],
        method_loss=loss[:k],
        random_loss=loss[k:],
        removal_order=tuple(train.ids[i] for i in order),
    )


def pruning_curve_config(
    usefulness: torch.Tensor | np.ndarray,
    train: ExampleSet,
    test: ExampleSet,
    model_config: ModelConfig,
    train_config: TrainConfig,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0,),
    random_seed: int = 0,
) -> dict:
    """The config dict keying a "pruning_curve" artifact; `usefulness` `[n_train]` enters as a digest."""
    use = as_float64(usefulness, "usefulness", (len(train),))
    return {
        "usefulness": hashlib.sha256(np.ascontiguousarray(use).tobytes()).hexdigest()[:16],
        "train": {"fingerprint": fingerprint(train), "n": len(train)},
        "test": {"fingerprint": fingerprint(test), "n": len(test)},
        "model": model_config.to_dict(),
        "training": train_config.to_dict(),
        "fractions": list(check_fractions(fractions, "pruning fractions")),
        "seeds": list(check_seeds(seeds)),
        "random_seed": check_int(random_seed, "random_seed"),
    }


def compute_pruning_curve(
    usefulness: torch.Tensor | np.ndarray,
    *curve_args,
    workspace: Workspace | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
    source: str = "",
    **curve_kwargs,
) -> PruningCurve:
    """`pruning_curve(usefulness, train, test, model_config, train_config, fractions, seeds, random_seed)`,
    computed once and stored in the workspace (reused when the config matches).

    `workspace` (required) holds the artifact; `source` is a free-form note of where the
    usefulness came from (e.g. the score artifact key), kept in the metadata.
    """
    ws = require_workspace(workspace, "compute_pruning_curve")
    cfg = pruning_curve_config(usefulness, *curve_args, **curve_kwargs)
    return ws.cached(
        PRUNING_KIND,
        cfg,
        lambda: pruning_curve(usefulness, *curve_args, **curve_kwargs, executor=executor, progress=progress),
        save=_save_curve,
        load=lambda _path, _meta: _load_curve(ws, cfg),
        extra=lambda curve: {"n_removed": list(curve.n_removed), "source": source},
    )


def _save_curve(d: Path, curve: PruningCurve) -> None:
    for name in _CURVE_ARRAYS:
        save_array(d, name, getattr(curve, name))
    save_array(d, "removal_order", np.asarray(curve.removal_order, dtype=str))


def stored_pruning_curve(
    usefulness: torch.Tensor | np.ndarray, *curve_args, workspace: Workspace | None = None, **curve_kwargs
) -> PruningCurve | None:
    """The stored curve for exactly these `pruning_curve` arguments, or None (nothing is retrained)."""
    ws = require_workspace(workspace, "stored_pruning_curve")
    cfg = pruning_curve_config(usefulness, *curve_args, **curve_kwargs)
    return _load_curve(ws, cfg) if ws.exists(PRUNING_KIND, cfg) else None


def _load_curve(ws: Workspace, cfg: dict) -> PruningCurve:
    path = ws.open(PRUNING_KIND, cfg)
    extra = ws.meta(PRUNING_KIND, path.name)["extra"]
    arrays = {name: load_array(path / f"{name}.npy") for name in _CURVE_ARRAYS}
    return PruningCurve(
        fractions=tuple(cfg["fractions"]),
        n_removed=tuple(int(k) for k in extra["n_removed"]),
        seeds=tuple(cfg["seeds"]),
        removal_order=tuple(str(i) for i in load_array(path / "removal_order.npy")),
        **arrays,
    )
