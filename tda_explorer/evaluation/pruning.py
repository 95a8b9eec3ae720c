"""Pruning curves: remove the k% least useful training examples, retrain, and compare with random removal.

Usefulness is `[n_train]`, higher = more useful to held-out data; `usefulness_from_scores` averages a score
matrix over validation queries (`backend.usefulness.usefulness`; positive score = helps, so the most
harmful examples have the lowest mean and go first). Removals are nested: the examples removed at k% are also removed at every larger k, for
the method (by usefulness, lowest first) and for the random baseline (one seeded permutation).

Rules (`rule_usefulness(val_scores, rule, labels, self_influence, own_loss)`, each `[n_train]`, higher =
kept longer; the first three are also `pruning_usefulness(useful, rule, ...)` of the mean usefulness):
- "sum": the usefulness itself (the summed validation helpfulness; the most harmful go first);
- "class_balanced": each example's rank *within its given class* scaled to [0, 1], so every removed
  fraction takes about the same share of each class (a plain sum is dominated by the gradient norm and
  concentrates its removals on the few classes whose hard examples oppose the summed validation
  gradient, which unbalances the kept set);
- "normalised": usefulness / sqrt(self-influence) (the gradient-norm factor divided out, a cosine
  between the example and the validation set; the largest-gradient examples, the hard but informative
  ones, no longer dominate both tails), then class-balanced;
- "harm": `backend.usefulness.harm`, the mean over validation queries of `min(score, 0)` (the predicted
  damage to the validation examples it hurts; help elsewhere does not offset it), class-balanced;
- "harm_loss": the mean of the normalised ranks of harm and of minus the example's own training loss
  (a rule that combines attribution with the loss baseline), class-balanced;
- "harm_mislabel": the same with the combined mislabel score (`evaluation.label_quality.DEFAULT_RULE`:
  out-of-fold margin + own loss + kNN label disagreement, higher = more suspicious) in place of the loss.
The iterative rules (`evaluation.iterative_pruning`) apply these round by round, retraining in between.
`DEFAULT_PRUNING_RULE` ("harm_loss") is the rule the app and the CLI start from (see its comment in
`backend.usefulness`); the app prefers the best curve measured on the run itself when there is one.
`pruning_curves` measures several rules at once (one shared random baseline, each distinct kept set
trained once per seed); `best_pruning_rule` picks, among measured curves, the rule with the highest mean accuracy over the removed
fractions.

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

from tda_explorer.backend.usefulness import PRUNING_RULES, harm
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
_CURVE_ARRAYS = ("method_acc", "method_loss", "random_acc", "random_loss")


def usefulness_from_scores(scores: torch.Tensor | np.ndarray) -> np.ndarray:
    """Usefulness to a validation set: `scores.mean(0)`, float64 `[n_train]` (higher = more useful).

    The package's one definition, `backend.usefulness.usefulness`, after a shape check.

    Args:
        scores: `[n_val, n_train]`, positive = the training example helps the validation example.
    """
    return mean_usefulness(as_float64(scores, "scores", (None, None)))


_SCORE_RULES = ("harm", "harm_loss", "harm_mislabel")  # need the score matrix, not only its mean


def class_balanced_usefulness(useful: np.ndarray, labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Within-class normalised rank of `useful` `[n]` in [0, 1] (0 = least useful of its class).

    Sorting by it removes about the same fraction of every class (ties between classes broken by position).
    """
    from scipy.stats import rankdata

    use = as_float64(useful, "usefulness", (None,))
    lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if lab.shape != use.shape:
        raise ConfigError(f"labels have shape {list(lab.shape)}, usefulness {list(use.shape)}.")
    out = np.empty_like(use)
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        out[idx] = (rankdata(use[idx]) - 0.5) / len(idx)
    return out


def pruning_usefulness(
    useful: np.ndarray | torch.Tensor,
    rule: str = "sum",
    labels: np.ndarray | torch.Tensor | None = None,
    self_influence: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """Usefulness `[n_train]` under a pruning rule (see the module docstring); higher = kept longer.

    Args:
        useful: `usefulness_from_scores(val_scores)`, `[n_train]`, positive = helps the validation set.
        rule: one of `PRUNING_RULES`.
        labels: the training labels `[n_train]` ("class_balanced", "normalised").
        self_influence: the attributor's self-influence `[n_train]`, >= 0 ("normalised").
    """
    use = as_float64(useful, "usefulness", (None,))
    if rule not in PRUNING_RULES:
        raise ConfigError(f"pruning rule {rule!r} is not one of {PRUNING_RULES}.")
    if rule in _SCORE_RULES:
        raise ConfigError(f"pruning rule {rule!r} needs the score matrix: use rule_usefulness(scores, ...).")
    if rule == "sum":
        return use
    if labels is None:
        raise ConfigError(f"pruning rule {rule!r} needs the training labels.")
    if rule == "normalised":
        if self_influence is None:
            raise ConfigError("pruning rule 'normalised' needs the attributor's self-influence.")
        si = np.clip(as_float64(self_influence, "self_influence", (len(use),)), 0.0, None)
        use = use / np.sqrt(si + 1e-12 * max(float(si.max()), 1e-30))
    return class_balanced_usefulness(use, labels)


def rule_usefulness(
    scores: np.ndarray | torch.Tensor,
    rule: str,
    labels: np.ndarray | torch.Tensor | None = None,
    self_influence: np.ndarray | torch.Tensor | None = None,
    own_loss: np.ndarray | torch.Tensor | None = None,
    mislabel: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """Usefulness `[n_train]` under any rule of `PRUNING_RULES` (module docstring); higher = kept longer.

    Args:
        scores: `[n_val, n_train]` validation-query scores, positive = the training example helps the query.
        rule: one of `PRUNING_RULES`.
        labels: the training labels `[n_train]` (every rule but "sum").
        self_influence: the attributor's self-influence `[n_train]`, >= 0 ("normalised").
        own_loss: each training example's own training loss `[n_train]`, nats ("harm_loss"; e.g.
            `evaluation.mislabel.training_loss_scores(run, train)`).
        mislabel: a mislabel score `[n_train]`, higher = more suspicious ("harm_mislabel"; e.g.
            `evaluation.label_quality.combined_mislabel_score(run, train, oof_probs)`).
    """
    s = as_float64(scores, "scores", (None, None))
    if rule not in _SCORE_RULES:
        return pruning_usefulness(mean_usefulness(s), rule, labels, self_influence)
    if labels is None:
        raise ConfigError(f"pruning rule {rule!r} needs the training labels.")
    damage = harm(s)
    if rule == "harm_loss":
        if own_loss is None:
            raise ConfigError("pruning rule 'harm_loss' needs each training example's own loss.")
        loss = as_float64(own_loss, "own_loss", (s.shape[1],))
        damage = _normalised_rank(damage) + _normalised_rank(-loss)
    elif rule == "harm_mislabel":
        if mislabel is None:
            raise ConfigError(
                "pruning rule 'harm_mislabel' needs a mislabel score per training example "
                "(evaluation.label_quality.combined_mislabel_score)."
            )
        suspicion = as_float64(mislabel, "mislabel", (s.shape[1],))
        damage = _normalised_rank(damage) + _normalised_rank(-suspicion)
    return class_balanced_usefulness(damage, labels)


def _normalised_rank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return (rankdata(x) - 0.5) / len(x)


def best_pruning_rule(curves: dict[str, PruningCurve], against_random: bool = False) -> str:
    """The name of the curve with the highest mean test accuracy over its removed fractions (k > 0).

    Args:
        curves: `{rule name: PruningCurve}` measured on the same run (same fractions and seeds).
        against_random: rank by the mean gain over the curve's own random removal instead.

    Returns:
        The best name (the first in `curves` order on a tie).
    """
    if not curves:
        raise ConfigError("best_pruning_rule needs at least one measured curve.")

    def value(c: PruningCurve) -> float:
        keep = np.asarray(c.fractions) > 0
        if not keep.any():
            raise ConfigError("a pruning curve without a removed fraction > 0 cannot rank rules.")
        acc = c.method_acc[keep] - (c.random_acc[keep] if against_random else 0.0)
        return float(acc.mean())

    values = {name: value(c) for name, c in curves.items()}
    return max(values, key=lambda k: values[k])


@dataclass(frozen=True, eq=False)
class PruningCurve:
    """Test accuracy and loss after pruning, per removed fraction and retraining seed.

    Attributes:
        fractions: removed fractions k, `[K]`.
        n_removed: examples removed at each fraction, `[K]`.
        seeds: retraining seeds, `[R]`.
        removal_order: training ids, least useful first (the method removes a prefix of it).
        method_acc, method_loss: float64 `[K, R]` test accuracy and mean test cross-entropy (nats) after
            removing by usefulness.
        random_acc, random_loss: the same after removing at random.
    """

    fractions: tuple[float, ...]
    n_removed: tuple[int, ...]
    seeds: tuple[int, ...]
    removal_order: tuple[str, ...]
    method_acc: np.ndarray
    method_loss: np.ndarray
    random_acc: np.ndarray
    random_loss: np.ndarray

    def table(self) -> list[dict]:
        """One row per fraction: fraction, n_removed, mean/std over seeds of accuracy and loss (to plot)."""
        arrays = {name: getattr(self, name) for name in _CURVE_ARRAYS}
        return [
            {"fraction": f, "n_removed": k}
            | {name: float(a[i].mean()) for name, a in arrays.items()}
            | {f"{name}_std": float(a[i].std()) for name, a in arrays.items()}
            for i, (f, k) in enumerate(zip(self.fractions, self.n_removed, strict=True))
        ]


def pruning_curve(usefulness: torch.Tensor | np.ndarray, *curve_args, **curve_kwargs) -> PruningCurve:
    """`pruning_curves({"method": usefulness}, ...)`'s one curve: retrain without the least useful
    `round(k * N)` examples for each removed fraction k, and without as many random ones.

    Args:
        usefulness: `[n_train]`, higher = more useful (ties broken by position, stably).
        curve_args, curve_kwargs: `train, test, model_config, train_config, fractions, seeds, random_seed,
            executor, progress` as for `pruning_curves`.

    Returns:
        PruningCurve with accuracies `[K, R]` for the method and the random baseline.
    """
    (curve,) = pruning_curves({"method": usefulness}, *curve_args, **curve_kwargs).values()
    return curve


def pruning_curves(
    usefulness: dict[str, torch.Tensor | np.ndarray],
    train: ExampleSet,
    test: ExampleSet,
    model_config: ModelConfig,
    train_config: TrainConfig,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0,),
    random_seed: int = 0,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> dict[str, PruningCurve]:
    """Pruning curves of several usefulness vectors at once, `{name: [n_train]}` -> `{name: PruningCurve}`.

    For each name and removed fraction k in [0, 1), the `round(k * N)` least useful examples (lowest
    first, ties broken by position) are removed; the random baseline removes a prefix of one
    `numpy.random.default_rng(random_seed)` permutation. Every distinct kept set (across names and the
    shared random baseline) is retrained once per seed with `model_config` / `train_config` (`executor`
    runs them, `progress` gets `(done, total, msg)`), so the curves are directly comparable and cost
    `#distinct masks x #seeds` trainings; accuracy and loss are measured on `test`.
    """
    n = len(train)
    if not usefulness:
        raise ConfigError("pruning_curves needs at least one usefulness vector.")
    uses = {name: as_float64(u, f"usefulness {name!r}", (n,)) for name, u in usefulness.items()}
    fractions, seeds, random_seed = _checked_setup(fractions, seeds, random_seed)
    n_removed = tuple(round(f * n) for f in fractions)
    if max(n_removed) >= n:
        raise ConfigError(
            f"removing {max(n_removed)} of {n} examples leaves none to train on; lower the fractions."
        )
    orders = {name: np.argsort(u, kind="stable") for name, u in uses.items()}
    perm = np.random.default_rng(random_seed).permutation(n)
    k = len(fractions)
    masks = np.ones(((len(uses) + 1) * k, n), dtype=bool)
    for j, order in enumerate([perm, *orders.values()]):
        for i, m in enumerate(n_removed):
            masks[j * k + i, order[:m]] = False
    unique, inverse = np.unique(masks, axis=0, return_inverse=True)  # k = 0 appears repeatedly: train once
    logits = retrain_on_subsets(model_config, train_config, train, unique, seeds, test, executor, progress)
    logits = logits[torch.from_numpy(inverse.reshape(-1))]
    acc = (logits.argmax(-1) == test.labels).double().mean(-1).numpy()
    loss = cross_entropy(logits, test.labels).mean(-1).numpy()
    return {
        name: PruningCurve(
            fractions=fractions,
            n_removed=n_removed,
            seeds=seeds,
            method_acc=acc[(j + 1) * k : (j + 2) * k],
            random_acc=acc[:k],
            method_loss=loss[(j + 1) * k : (j + 2) * k],
            random_loss=loss[:k],
            removal_order=tuple(train.ids[i] for i in order),
        )
        for j, (name, order) in enumerate(orders.items())
    }


def _checked_setup(fractions, seeds, random_seed) -> tuple[tuple[float, ...], tuple[int, ...], int]:
    return (
        check_fractions(fractions, "pruning fractions"),
        check_seeds(seeds),
        check_int(random_seed, "random_seed"),
    )


def pruning_curve_config(
    usefulness: torch.Tensor | np.ndarray, train: ExampleSet, test: ExampleSet, model_config: ModelConfig,
    train_config: TrainConfig, fractions: Sequence[float] = DEFAULT_FRACTIONS, seeds: Sequence[int] = (0,),
    random_seed: int = 0,
) -> dict:  # fmt: skip
    """The config dict keying a "pruning_curve" artifact (`usefulness` `[n_train]` enters as a digest;
    the other arguments as for `pruning_curves`)."""
    use = as_float64(usefulness, "usefulness", (len(train),))
    fractions, seeds, random_seed = _checked_setup(fractions, seeds, random_seed)
    return {
        "usefulness": hashlib.sha256(np.ascontiguousarray(use).tobytes()).hexdigest()[:16],
        "train": {"fingerprint": fingerprint(train), "n": len(train)},
        "test": {"fingerprint": fingerprint(test), "n": len(test)},
        "model": model_config.to_dict(),
        "training": train_config.to_dict(),
        "fractions": list(fractions),
        "seeds": list(seeds),
        "random_seed": random_seed,
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
