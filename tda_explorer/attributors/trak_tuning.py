"""TRAK's `damping="auto"`: lambda chosen per run from the run's own data, never from the evaluation.

Why a data-driven lambda: the best lambda depends on how the model was trained, not only on the kernel.
Measured on digits (N = 1,297) against an LDS ground truth (`benchmarks/robustness.py`), the best
lambda in units of `trace(Phi^T Phi) / N` (the mean squared feature norm) did not move with the
projection size k (128 ... 2,048), but it was ~1 for logistic regression trained to convergence by
full-batch L-BFGS and ~3 for the same model trained by 20 epochs of SGD (early stopping regularises
the directions of small curvature, which a larger lambda mimics); the old rule, a multiple of the mean
*nonzero eigenvalue* `trace / min(k, N)`, changes the lambda with k and lost up to 0.14 LDS to the best
fixed value. Nothing in `Phi` tells the two recipes apart, so the rule measures:

1. **Held-out mini-LDS on the validation split** (when the run has a training recipe — `train_config` or
   an imported run's `train_fn` — and validation examples): `TUNE_SUBSETS` random half subsets of the
   training set (their own seed stream, `TUNE_SUBSET_SEED`, never the evaluation's), one retraining per
   subset with the run's recipe, targets = the losses of the first `TUNE_QUERIES` validation examples
   (all of them when the split is smaller). For
   each factor c of `FACTORS` the TRAK predictions of those subsets are computed from one
   eigendecomposition per model (`spectral_parts`: every lambda costs one `[n_val, r] x [r, M]` product),
   and c = the argmax of the mean Spearman correlation, refined to the vertex of a parabola in log c
   through it and its grid neighbours (`refine`). The test queries and the LDS ground truth
   artifacts are never read. Cost: `TUNE_SUBSETS` retrainings of one seed on half the training set
   (cached by the attributor's `workspace` when it has one, and in memory for the process; counted by the
   app's estimate, `tda_explorer.estimates`), one featurisation of up to `TUNE_QUERIES` validation queries
   per model, and an eigendecomposition of each model's `[min(k, N)]`-square Gram matrix. The
   retrainings dominate: 24 of them took 1.6x the seconds of 16 on the mnist5k demo MLP (alternated runs
   in one process, same load).

   Size of the signal: the choice is noisy mostly through *which* subsets were retrained (one draw is
   shared by every query, so its noise does not average over queries), less through the queries;
   `benchmarks/trak_tuning_noise.py` measures the LDS the choice loses for several sizes and rules by
   resampling a larger held-out pool, which set 24 subsets x 250 queries (one-standard-error, wider-parabola
   and Pearson variants of the rule lost more there).
2. **Fallback** (no recipe, no validation split, or a text model, whose `TUNE_SUBSETS` fine-tunes are too
   costly): c = `AUTO_FACTOR`, the geometric middle of the measured optima of both recipes (within 0.03 LDS
   of the best fixed value on the digits protocols).

Either way each model's lambda is `c x trace(Phi_m^T Phi_m) / N`; the chosen c, the rule that chose it
and the validation table are kept in `TRAK.tuning_` and in the score artifact's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tda_explorer.backend.stats import spearman_rows
from tda_explorer.data.example_set import ExampleSet, examples_fingerprint
from tda_explorer.errors import ConfigError
from tda_explorer.store import load_array, save_array
from tda_explorer.store.kinds import ArtifactKind, register_kind

#: Candidate factors c (lambda = c x trace / N); 0 = plain TRAK (pseudo-inverse).
FACTORS: tuple[float, ...] = (0.0, 0.01, 0.03, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
#: c when no held-out signal can be made (see the module docstring).
AUTO_FACTOR = 2.0
#: Retrainings (half subsets) and validation queries of the held-out signal (see the module docstring).
TUNE_SUBSETS = 24
TUNE_QUERIES = 250
#: Seed stream of the tuning subsets (the LDS evaluation draws from `LDSConfig.subset_seed`, 0 by default).
TUNE_SUBSET_SEED = 7_919

_MEMORY: dict[str, np.ndarray] = {}

#: The held-out losses `[M, n_val]` of the retrainings, one artifact per (recipe, train, val, subsets).
TUNE_KIND = register_kind(
    ArtifactKind(
        "trak_tune",
        files=("losses.npy",),
        save=lambda d, losses: save_array(d, "losses", losses),
        load=lambda path, _meta: load_array(path / "losses.npy"),
        recompute="fit TRAK (or influence) with damping 'auto' again",
    )
).name


@dataclass
class Tuning:
    """What "auto" chose.

    Attributes:
        factor: c, lambda = c x trace(Phi^T Phi) / N per model.
        rule: "validation-lds" (held-out mini-LDS) or "fallback" (`AUTO_FACTOR`), with `reason` saying why.
        table: factor -> mean validation Spearman (empty for the fallback).
        n_subsets, n_queries: size of the held-out signal.
    """

    factor: float
    rule: str
    reason: str = ""
    table: dict[float, float] = field(default_factory=dict)
    n_subsets: int = 0
    n_queries: int = 0

    def to_dict(self) -> dict:
        return {
            "factor": self.factor,
            "rule": self.rule,
            "reason": self.reason,
            "table": {str(k): v for k, v in self.table.items()},
            "n_subsets": self.n_subsets,
            "n_queries": self.n_queries,
        }


def tune_masks(n_train: int, n_subsets: int = TUNE_SUBSETS) -> np.ndarray:
    """Boolean `[n_subsets, n_train]` half subsets from the tuning seed stream (`TUNE_SUBSET_SEED`)."""
    masks = np.zeros((n_subsets, n_train), dtype=bool)
    for j in range(n_subsets):
        rng = np.random.default_rng([TUNE_SUBSET_SEED, j])
        masks[j, rng.choice(n_train, size=n_train // 2, replace=False)] = True
    return masks


def spectral_parts(
    gram: torch.Tensor, dual: bool, phi: torch.Tensor, query: torch.Tensor, group: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One model's kernel in its eigenbasis, for predictions at many lambdas.

    Args:
        gram: `Phi^T Phi` `[k, k]` (dual False) or `Phi Phi^T` `[N, N]` (dual True), no lambda added.
        phi: train features `[N, k]`; query: query features `[n, k]`; group: `[M, N]` subset masks times Q.

    Returns:
        `(s2 [r], a [n, r], c [M, r])` such that the subset predictions at lambda are
        `(a / (s2 + lambda)) @ c.T` `[n, M]` (zero eigenvalues are dropped: the pseudo-inverse at 0).
    """
    s2, vecs = torch.linalg.eigh(gram.double())
    keep = s2 > s2.max().clamp_min(1e-300) * s2.numel() * torch.finfo(torch.float64).eps
    s2, vecs = s2[keep], vecs[:, keep]
    phi, query, group = phi.double(), query.double(), group.double()
    if dual:  # K(q) = q Phi^T U diag(1/(s2+l)) U^T
        return s2, (query @ phi.T) @ vecs, group @ vecs
    return s2, query @ vecs, group @ (phi @ vecs)  # K(q) = q V diag(1/(s2+l)) V^T Phi^T


def choose_factor(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    scales: Sequence[float],
    losses: np.ndarray,
    factors: Sequence[float] = FACTORS,
) -> tuple[float, dict[float, float]]:
    """The factor whose TRAK predictions best rank the held-out subset losses.

    Args:
        parts: per model, `spectral_parts(...)`.
        scales: per model, `trace / N` (lambda = factor x scale).
        losses: `[M, n]` held-out losses after retraining on each subset.

    Returns:
        `(best factor, {factor: mean Spearman over the n queries})`.
    """
    table = {}
    for c in factors:
        pred = sum((a / (s2 + c * scale)) @ g.T for (s2, a, g), scale in zip(parts, scales, strict=True))
        rho = spearman_rows(pred.numpy(), -losses.T)
        table[float(c)] = float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")
    finite = {c: v for c, v in table.items() if np.isfinite(v)}
    if not finite:
        return AUTO_FACTOR, table
    return refine(finite), table


def refine(table: dict[float, float]) -> float:
    """The grid's argmax, moved to the vertex of the parabola through it and its two neighbours in log c
    (clipped to them) when all three are positive factors: a factor between two grid points is not
    rounded to the one the held-out noise happens to favour (grid steps are 2-2.5x)."""
    grid = sorted(table)
    i = max(range(len(grid)), key=lambda j: table[grid[j]])
    if i == 0 or i == len(grid) - 1 or grid[i - 1] <= 0:
        return grid[i]
    x0, x1, x2 = np.log(grid[i - 1 : i + 2])
    y0, y1, y2 = (table[c] for c in grid[i - 1 : i + 2])
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    if den <= 0:  # flat: no curvature to follow
        return grid[i]
    vertex = x1 - 0.5 * ((x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)) / den
    return float(np.exp(np.clip(vertex, x0, x2)))


def heldout_losses(run, train: ExampleSet, val: ExampleSet, masks: np.ndarray, workspace=None) -> np.ndarray:
    """Cross-entropy `[M, n_val]` of `val` after retraining the run's recipe on each mask (seed 0).

    Cached in `workspace` (kind "trak_tune") when given, and in memory for the process.
    """
    from tda_explorer.training.runs import retrain_on_subsets

    recipe = run.train_config
    cfg = {
        "model": run.model_config.to_dict(),
        "training": recipe.to_dict(),
        "train": examples_fingerprint(train),
        "val": examples_fingerprint(val),
        "subsets": [TUNE_SUBSET_SEED, len(masks)],
    }
    key = repr(cfg)
    if key in _MEMORY:
        return _MEMORY[key]

    def compute() -> np.ndarray:  # [M, n_val] float64 cross-entropy, mean over the one retraining seed
        logits = retrain_on_subsets(run.model_config, recipe, train, masks, (0,), val)
        m, r, n, c = logits.shape  # [M, R = 1 seed, n_val, C]
        ce = F.cross_entropy(logits.double().reshape(-1, c), val.labels.repeat(m * r), reduction="none")
        return ce.reshape(m, r, n).numpy().mean(axis=1)

    losses = compute() if workspace is None else workspace.cached(TUNE_KIND, cfg, compute)
    _MEMORY[key] = losses
    return losses


def heldout_signal(
    run,
    train: ExampleSet,
    n_subsets: int,
    validation: ExampleSet | None,
    workspace=None,
    n_queries: int = TUNE_QUERIES,
):
    """`(val [n], masks [M, N], losses [M, n])` of the held-out mini-LDS, or a string saying why there is none.

    `n = min(len(validation split), n_queries)`, `M = n_subsets`. Shared by TRAK's `damping="auto"` and
    influence's `damping_factor="auto"` (the same retrainings, cached once).
    """
    from tda_explorer.models.tasks import task_of

    if n_subsets == 0:
        return "tune_subsets=0"
    if getattr(run.model_config, "arch", "") == "text":  # n_subsets fine-tunes are not a default
        return (
            f"text model: the held-out retrainings would cost {n_subsets} fine-tunes (pass an explicit value)"
        )
    if run.train_config is None:
        return "the run has no training recipe (import it with train_config or train_fn)"
    if task_of(run.model(run.seeds[0])) == "regression":
        return "regression run (the held-out signal is a classification loss)"
    val = validation if validation is not None else validation_split(run)
    if val is None:
        return "no validation split to hold out"
    if n_queries < 2:
        raise ConfigError(f"the held-out signal needs >= 2 validation queries, got n_queries={n_queries}.")
    val = val.subset(range(min(len(val), n_queries)), name=f"{val.name}:tune")
    masks = tune_masks(len(train), n_subsets)
    return val, masks, heldout_losses(run, train, val, masks, workspace)


def score_table(predict, losses: np.ndarray, factors: Sequence[float]) -> tuple[float, dict[float, float]]:
    """`(refined best factor, {factor: mean Spearman})` for `predict(factor) -> [n, M]` subset predictions
    (larger = more helpful) against held-out losses `[M, n]`."""
    table = {}
    for c in factors:
        rho = spearman_rows(np.asarray(predict(c), dtype=np.float64), -losses.T)
        table[float(c)] = float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan")
    finite = {c: v for c, v in table.items() if np.isfinite(v)}
    return (refine(finite) if finite else float("nan")), table


def validation_split(run) -> ExampleSet | None:
    """The run's validation examples, reloaded from its dataset spec (None if that fails or is empty)."""
    from tda_explorer.data import DatasetSpec, load_dataset

    try:
        val = load_dataset(DatasetSpec.from_dict(run.dataset)).val
    except Exception:  # noqa: BLE001 - any failure to reload just means no held-out signal
        return None
    return val if val is not None and len(val) > 1 else None
