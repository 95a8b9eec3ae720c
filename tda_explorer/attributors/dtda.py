"""d-TDA (Mlodozeniec et al., 2025): distributional training data attribution over the seeds of a run.

Training is random (init, batch order), so the S seeds of a run sample the distribution of a
measurement `m` of a query: its loss, margin or class probability (`measurement`), for the true class
or a chosen one (`target_class`). Per seed s a base attributor at that seed's weights (`base`) predicts
the measurement without training example z, `Y_s(q, z) = m(q; theta_s) + delta_s(q, z)`, with

    delta_s(q, z) = grad m(q; theta_s) . dtheta_s(z)     (predicted change of m when z is removed)

and `dtheta_s(z)` the base's predicted weight change on removing z:
- "influence": `(H + shift I)^{-1} g(z) / N` (EK-FAC by default; any influence solver via base_settings);
- "source": Source's unrolled response `r(z)`;
- "trak": `-(Phi^T Phi + lambda I)^{-1} phi(z) Q(z)` in TRAK's projected space (TRAK's own scale);
- "unrolled": no weight change at all: `delta_s = -dm(q)/dw_z`, the exact first-order change of seed s's
  measurement when z is removed from its replayed run (same init, batches, dropout; `attributors.unrolled`).

Sign, explicitly: `delta` is always "change of m on removal". For the loss it equals the base's score
(positive = z helps); for margin and prob (higher = better) it is minus the helpfulness of z for that
measurement. `HIGHER_IS_BETTER` holds which is which and `helps_sign` turns a shift into our house sign.

From X = {m(theta_s)}_s and Y = {m(theta_s) + delta_s(z)}_s (`DTDAResult`):
- mean shift `E[Y] - E[X] = mean_s delta_s`; mean influence (house sign, positive = z helps the query)
  `= helps_sign * mean shift` (= +mean shift for the loss, -mean shift for margin/prob);
- variance influence `Var Y - Var X` (population variances over seeds; positive = removing z spreads m);
- Wasserstein-2 influence `W2(X, Y) = sqrt(mean_k (sort(X)_k - sort(Y)_k)^2)` (1-D, equal sizes, >= 0).

As an Attributor, `score()` is the mean influence `[n_query, n_train]` and `self_influence()` the mean
over seeds of the base's self-influence. `DTDA.compute` (or `compute_dtda`) keeps the per-seed values (`measurements
[S, n_query]`, `deltas [S, n_query, n_train]`) for histograms and caches them (artifact kind "dtda"),
fitting one seed's base at a time.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from tda_explorer.attributors.base import Attributor, make_attributor, register
from tda_explorer.attributors.influence import Influence
from tda_explorer.attributors.method_settings import (
    DTDA_BASE_SETTINGS,
    DTDA_BASES,
    MEASUREMENTS,
    DTDASettings,
)
from tda_explorer.attributors.source import Source
from tda_explorer.attributors.trak import TRAK
from tda_explorer.attributors.unrolled import Unrolled
from tda_explorer.backend.device import get_device, get_dtype
from tda_explorer.backend.features import gradient_features
from tda_explorer.backend.scoring import dot_scores
from tda_explorer.data.example_set import DatasetSplits, ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import prepare_inputs
from tda_explorer.store import Workspace, load_array, require_workspace, save_arrays
from tda_explorer.training.runs import TrainedRun
from tda_explorer.training.trainer import Progress

HIGHER_IS_BETTER = {"loss": False, "margin": True, "prob": True}
# the d-TDA bases and their default settings (last-layer gradients for influence and TRAK) live with the
# settings dataclass (`method_settings`); the names here are kept for the pages and the CLI
BASES = DTDA_BASES
DEFAULT_BASE_SETTINGS = DTDA_BASE_SETTINGS
KIND = "dtda"


def helps_sign(measurement: str) -> int:
    """+1 if a rise of `measurement` is bad (loss), -1 if good (margin, prob): house sign = this x shift."""
    return -1 if HIGHER_IS_BETTER[measurement] else 1


def measurement_values(logits: torch.Tensor, targets: torch.Tensor, measurement: str) -> torch.Tensor:
    """`m` per row, float64: logits `[..., n, C]`, targets `[n]` -> `[..., n]`.

    loss = cross-entropy of the target class (nats); margin = `z_t - logsumexp_{c != t} z_c`;
    prob = `softmax(z)_t`.
    """
    z = logits.double()
    t = targets.expand(z.shape[:-1]).unsqueeze(-1)
    if measurement == "loss":
        return -torch.log_softmax(z, -1).gather(-1, t).squeeze(-1)
    if measurement == "margin":
        others = z.masked_fill(F.one_hot(t.squeeze(-1), z.shape[-1]).bool(), float("-inf"))
        return z.gather(-1, t).squeeze(-1) - torch.logsumexp(others, -1)
    if measurement == "prob":
        return torch.softmax(z, -1).gather(-1, t).squeeze(-1)
    raise ConfigError(f"measurement {measurement!r} is not one of {MEASUREMENTS}.")


def w2_distance(x: np.ndarray, y: np.ndarray, axis: int = 0) -> np.ndarray:
    """1-D Wasserstein-2 between equal-size empirical samples along `axis` (broadcasting the rest).

    `sqrt(mean_k (sort(x)_k - sort(y)_k)^2)`.
    """
    xs, ys = np.sort(x, axis=axis), np.sort(y, axis=axis)
    if xs.shape[axis] != ys.shape[axis]:
        raise ConfigError(f"W2 needs equal sample sizes, got {xs.shape[axis]} and {ys.shape[axis]}.")
    return np.sqrt(np.mean((xs - ys) ** 2, axis=axis))


def _implicit_self_influence(base: Attributor, n_train: int) -> np.ndarray:
    """A base's self-influence `[N]` float32, or NaN where it costs a pass per example (`cached_self_influence`)."""
    if not base.cached_self_influence:
        return np.full(n_train, np.nan, dtype=np.float32)
    return base.self_influence().float().cpu().numpy()


def single_seed_view(run: TrainedRun, seed: int) -> TrainedRun:
    """The run restricted to one seed (shares the weights); each seed's base attributor is fitted on it."""
    if seed not in run.checkpoints:
        raise ConfigError(f"run {run.key} has no seed {seed}; its seeds are {list(run.seeds)}.")
    return dataclasses.replace(
        run,
        seeds=(seed,),
        checkpoints={seed: run.checkpoints[seed]},
        metrics={seed: run.metrics.get(seed, {})},
    )


# --------------------------------------------------------------------------------- base adapters
# Each maps (fitted single-seed base, query examples, targets, objective) to delta [n_query, N]
# float32 = grad m(q) . dtheta(z), the predicted change of m when z is removed.
def _influence_effects(base: Influence, queries: ExampleSet, targets: torch.Tensor, objective: str):
    (m,) = base.members_
    inputs = prepare_inputs(m.model, queries.inputs)
    v = gradient_features(m.model, inputs, targets, base.settings.params, objective, dtype=base._dtype())
    return m.dot(m.inverse.solve(v) / base.n_train_)  # dtheta = +(H + shift)^{-1} g / N


def _source_effects(base: Source, queries: ExampleSet, targets: torch.Tensor, objective: str):
    (m,) = base.members_
    inputs = prepare_inputs(m.model, queries.inputs)
    v = gradient_features(m.model, inputs, targets, base.settings.params, objective, dtype=get_dtype())
    return dot_scores(v, m.responses)  # dtheta = +r(z)


def _trak_effects(base: TRAK, queries: ExampleSet, targets: torch.Tensor, objective: str):
    total = base.kernel_scores(queries, targets, objective)
    return -(total * base.q_.float().cpu())  # dtheta = -K^{-1} phi(z) Q(z): TRAK's score is the margin *gain*


def _unrolled_effects(base: Unrolled, queries: ExampleSet, targets: torch.Tensor, objective: str):
    (m,) = base.members_
    return -base.weight_gradients(m, queries, targets, objective)  # delta = -dm/dw_z (weight 1 -> 0)


EFFECTS: dict[str, Callable[..., torch.Tensor]] = {
    "influence": _influence_effects,
    "source": _source_effects,
    "trak": _trak_effects,
    "unrolled": _unrolled_effects,
}


@dataclass(frozen=True, eq=False)
class DTDAResult:
    """Per-seed d-TDA values and the distributional influences derived from them.

    Attributes:
        measurements: float64 `[S, n_query]`, `m(q; theta_s)` of the run's models (trained on all data).
        deltas: float32 `[S, n_query, n_train]`, predicted change of m when the train example is removed.
        self_influence: float32 `[n_train]`, mean over seeds of the base's self-influence.
        measurement / target_class / base / seeds: how they were made (target None = true class).
        query_ids / train_ids: row and column ids.
        config: the d-TDA settings; key: artifact key ("" if not stored); seconds: compute time.
    """

    measurements: np.ndarray
    deltas: np.ndarray
    self_influence: np.ndarray
    measurement: str
    target_class: int | None
    base: str
    seeds: tuple[int, ...]
    query_ids: tuple[str, ...]
    train_ids: tuple[str, ...]
    config: dict = field(default_factory=dict)
    key: str = ""
    seconds: float = 0.0

    @property
    def helps_sign(self) -> int:
        return helps_sign(self.measurement)

    def predicted(self) -> np.ndarray:
        """`Y = m(theta_s) + delta_s`, float64 `[S, n_query, n_train]` (the measurement without each z)."""
        return self.measurements[:, :, None] + self.deltas.astype(np.float64)

    def mean_shift(self) -> np.ndarray:
        """`E[Y] - E[X] = mean_s delta_s`, float64 `[n_query, n_train]` (change of m on removal)."""
        return self.deltas.astype(np.float64).mean(0)

    def mean_influence(self) -> np.ndarray:
        """House sign, float32 `[n_query, n_train]`: `helps_sign * mean shift` (positive = z helps)."""
        return (self.helps_sign * self.mean_shift()).astype(np.float32)

    def variance_influence(self) -> np.ndarray:
        """`Var_s Y - Var_s X` (ddof 0), float64 `[n_query, n_train]`; positive = removing z spreads m."""
        return self.predicted().var(0) - self.measurements.var(0)[:, None]

    def w2_influence(self) -> np.ndarray:
        """`W2(X, Y)` over seeds, float64 `[n_query, n_train]`, >= 0."""
        return w2_distance(self.measurements[:, :, None], self.predicted(), axis=0)

    def pair(self, query: int, train: int) -> tuple[np.ndarray, np.ndarray]:
        """The two samples for a histogram: m with the data `[S]`, predicted m without example `train` `[S]`."""
        x = self.measurements[:, query]
        return x, x + self.deltas[:, query, train].astype(np.float64)


@dataclass
class _SeedMember:
    seed: int
    base: Attributor
    model: torch.nn.Module


@register
class DTDA(Attributor):
    """d-TDA (see module docstring); settings: `DTDASettings` (`base_settings` stored with the base's
    defaults filled in, over `DEFAULT_BASE_SETTINGS[base]`, so cached results follow default changes)."""

    name = "dtda"
    Settings = DTDASettings
    settings: DTDASettings

    # ----------------------------------------------------------------------------------- per seed
    def _targets(self, queries: ExampleSet, n_classes: int) -> torch.Tensor:
        c = self.settings.target_class
        if c is None:
            return queries.labels
        if not 0 <= c < n_classes:
            raise ConfigError(f"target_class {c} is not a class index in [0, {n_classes}).")
        return torch.full_like(queries.labels, c)

    def _fit_seed(self, run: TrainedRun, train: ExampleSet, seed: int) -> _SeedMember:
        s = self.settings
        base = make_attributor(s.base, **s.base_settings).fit(single_seed_view(run, seed), train)
        return _SeedMember(seed, base, run.model(seed))

    def _seed_values(self, member: _SeedMember, queries: ExampleSet) -> tuple[torch.Tensor, torch.Tensor]:
        """`m(q; theta_s)` float64 `[n_query]` and `delta_s` float32 `[n_query, N]` for one seed."""
        s = self.settings
        targets = self._targets(queries, self.n_classes_)
        model = member.model.to(get_device(), get_dtype()).eval()
        inputs = prepare_inputs(model, queries.inputs)
        with torch.no_grad():
            x = inputs.to(get_device())
            logits = model(x.to(get_dtype()) if x.is_floating_point() else x)
        values = measurement_values(logits.cpu(), targets, s.measurement)
        deltas = EFFECTS[s.base](member.base, queries, targets, s.measurement)
        return values, deltas.float().cpu()

    # ----------------------------------------------------------------------------------- protocol
    def fit(self, run: TrainedRun, train: ExampleSet) -> DTDA:
        """Fit one base attributor per chosen seed (on a single-seed view of the run); returns self."""
        self.n_train_, self.n_classes_, self.train_ids_ = len(train), run.n_classes, tuple(train.ids)
        label = f"dtda/{self.settings.base}"
        self.members_ = self._fit_seeds(run, lambda seed: self._fit_seed(run, train, seed), label)
        self.fitted_ = True
        return self

    def distribution(self, queries: ExampleSet) -> DTDAResult:
        """Per-seed measurements and deltas for `queries` as a DTDAResult (not stored)."""
        self._check_fitted()
        values, deltas = zip(*(self._seed_values(m, queries) for m in self.members_), strict=True)
        return DTDAResult(
            measurements=torch.stack(values).numpy(),
            deltas=torch.stack(deltas).numpy(),
            self_influence=np.mean(
                [_implicit_self_influence(m.base, self.n_train_) for m in self.members_], 0
            ),
            measurement=self.settings.measurement,
            target_class=self.settings.target_class,
            base=self.settings.base,
            seeds=tuple(m.seed for m in self.members_),
            query_ids=tuple(queries.ids),
            train_ids=self.train_ids_,
            config=self.config(),
        )

    def compute(
        self,
        run: TrainedRun,
        splits: DatasetSplits,
        split: str = "test",
        workspace: Workspace | None = None,
        progress: Progress | None = None,
    ) -> DTDAResult:
        """d-TDA values of the `split` queries against the training set; cached (artifact kind "dtda").

        Unlike `fit` + `distribution`, fits one seed's base at a time and keeps only its `[n_query, N]`
        deltas, so memory holds one base.

        Args:
            run, splits: the run and its data (`splits.train` is what is attributed).
            split: "test" or "val".
            workspace: where the result is cached (required).
            progress: `progress(done, total, msg)` over the seeds (default: the attributor's).

        Returns:
            The DTDAResult (per-seed measurements `[S, n_query]` and deltas `[S, n_query, N]`).
        """
        if split not in ("test", "val"):
            raise ConfigError(f"query split {split!r} is not one of ('test', 'val').")
        ws = require_workspace(workspace, "DTDA.compute")
        progress = progress or self.progress
        cfg = dtda_config(run, self, split)
        queries, train = getattr(splits, split), splits.train

        def seed_by_seed() -> tuple[dict[str, np.ndarray], dict]:
            start = time.perf_counter()
            seeds = run.select_seeds(self.settings.seeds)
            self.n_train_, self.n_classes_ = len(train), run.n_classes
            values, deltas, self_inf = [], [], []
            for i, seed in enumerate(seeds):
                member = self._fit_seed(run, train, seed)
                v, d = self._seed_values(member, queries)
                values.append(v.numpy())
                deltas.append(d.numpy())
                self_inf.append(_implicit_self_influence(member.base, len(train)))
                del member
                if progress is not None:
                    progress(i + 1, len(seeds), f"dtda: seed {seed} done")
            arrays = {
                "measurements": np.stack(values),
                "deltas": np.stack(deltas).astype(np.float32),
                "self_influence": np.mean(self_inf, axis=0).astype(np.float32),
            }
            ids = {"query_ids": list(queries.ids), "train_ids": list(train.ids), "seeds": list(seeds)}
            return arrays, ids | {"seconds": time.perf_counter() - start}

        return ws.cached(
            KIND,
            cfg,
            seed_by_seed,
            save=lambda d, value: save_arrays(d, value[0]),
            load=lambda _path, _meta: load_dtda(ws, cfg),
            extra=lambda value: value[1],
        )

    def score(self, queries: ExampleSet) -> torch.Tensor:
        """Mean influence `[n_query, N]` float32: `helps_sign * mean_s delta_s` (positive = z helps)."""
        self._check_fitted()
        total = sum(self._seed_values(m, queries)[1].double() for m in self.members_)
        return (helps_sign(self.settings.measurement) * total / len(self.members_)).float()

    def self_influence(self) -> torch.Tensor:
        """Mean over seeds of the base's self-influence `[N]` float32 (the base's loss-based sign)."""
        self._check_fitted()
        return torch.stack([m.base.self_influence().float().cpu() for m in self.members_]).mean(0)


# ------------------------------------------------------------------------------------- caching
def dtda_config(run: TrainedRun, attributor: DTDA, split: str) -> dict:
    return {"run": run.key, "method": attributor.config(), "queries": split}


def compute_dtda(
    run: TrainedRun,
    splits: DatasetSplits,
    settings: dict | None = None,
    split: str = "test",
    workspace: Workspace | None = None,
    progress: Progress | None = None,
) -> DTDAResult:
    """`DTDA(**settings).compute(run, splits, split, workspace, progress)` (see `DTDA.compute`)."""
    return DTDA(**dict(settings or {})).compute(run, splits, split, workspace, progress)


def load_dtda(ws: Workspace, cfg: dict) -> DTDAResult:
    """A stored DTDAResult by its config (ArtifactError if absent)."""
    path = ws.open(KIND, cfg)
    extra = ws.meta(KIND, path.name)["extra"]
    method = cfg["method"]
    return DTDAResult(
        measurements=load_array(path / "measurements.npy"),
        deltas=load_array(path / "deltas.npy"),
        self_influence=load_array(path / "self_influence.npy"),
        measurement=method["measurement"],
        target_class=method["target_class"],
        base=method["base"],
        seeds=tuple(int(s) for s in extra["seeds"]),
        query_ids=tuple(extra["query_ids"]),
        train_ids=tuple(extra["train_ids"]),
        config=cfg,
        key=path.name,
        seconds=float(extra["seconds"]),
    )
