"""Predicted wall time of a long step (training, an attributor, d-TDA, the LDS ground truth, a map, a
pruning curve) from a cost model calibrated on this machine.

The model: `seconds = fixed + rate x units`, with `units` the work of the step counted from its shape

- training:      two parts, seeds x optimisation steps (epochs x batches: the per-step overhead, which
                 dominates small models on CPU) and seeds x examples x epochs x parameters (the arithmetic);
- attributor m:  models x (train + query examples) x parameters used (all, or the head's), x checkpoints
                 for TracIn / influence over every checkpoint; TRAK's `damping="auto"` adds its
                 held-out retrainings (`TUNE_SUBSETS` trainings of one seed on half the data, at the
                 training rate), unless the workspace already holds them;
- d-TDA:         seeds x (train + query examples) x parameters used by the per-seed response;
- LDS truth / pruning curve: retrainings x examples kept x epochs x parameters (the training rate);
- map:           points (UMAP), plus the one-off numba compilation of the first map in a process.

`fixed` and `rate` (seconds per unit, on an idle machine) per kind ("train", "attr:trak", "dtda:influence",
"map", ...) start from `DEFAULTS`, measured on the development machine (2 cores, MNIST 5k MLP demo), and are
refreshed from the durations actually recorded in a workspace (`record_duration` ->
`<workspace>/calibration.json`, the median of the last `KEEP` observed rates per kind). A kind nobody
measured yet borrows TRAK's rate and says so (`Estimate.calibrated` False). CPU-bound work on a shared
machine slows down with its load, so an estimate is multiplied by `load_factor()` (a power of the load
average per CPU, at least 1) and a recorded duration divided by it. Units are counts, rates seconds.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field

from tda_explorer.errors import ConfigError
from tda_explorer.store import Workspace
from tda_explorer.store.atomic import atomic_write_text

CALIBRATION_FILE = "calibration.json"
KEEP = 12  # observations kept per kind (the rate is their median)
#: Wall time below which a step starts without asking (the app shows the estimate and Start/Cancel above).
ASK_ABOVE_S = 30.0

#: (fixed s, rate s/unit) per kind on an idle machine, fitted on the development machine (2 cores) to two
#: journeys over the MNIST 5k MLP demo (4,000 train, 500 test examples, 235,146 parameters, head 1,290), one
#: at load 0.3-6 and one at load 23-28, each divided by its `load_factor()`: 5 seeds 12.5 s / 87 s,
#: Grad-Dot 0.8 s / 2.0 s, TRAK (1 model, "auto" with 16 retrainings then) 79.6 s / 236 s, d-TDA (influence
#: over the head, 5 seeds) 65.8 s / 207 s, first map 34.7 s / 104 s; digits logistic regression for the
#: per-step overhead of training. TRAK fits worst (its predictions are ~0.6x and ~1.6x of those two).
DEFAULTS: dict[str, tuple[float, float]] = {
    "train:steps": (0.3, 1.0e-3),
    "train": (0.0, 1.1e-10),
    "attr:grad_dot": (0.3, 8.6e-8),
    "attr:grad_cos": (0.3, 8.6e-8),
    "attr:tracin": (0.3, 8.6e-8),
    "attr:repsim": (0.3, 1.0e-8),
    "attr:trak": (1.0, 2.8e-8),
    "attr:influence": (1.0, 2.8e-8),
    "dtda:influence": (1.0, 1.0e-6),
    "dtda:trak": (1.0, 1.0e-6),
    "map": (0.5, 1.5e-3),
    "map:compile": (10.0, 0.0),
}
_FALLBACK_KIND = "attr:trak"
_LABELS = {"train": "training", "train:steps": "training", "map": "UMAP", "map:compile": "numba compilation"}


@dataclass(frozen=True)
class Shape:
    """What a step's cost depends on: example counts, parameter counts (all / head) and the recipe's epochs."""

    n_train: int
    n_query: int
    n_params: int
    n_head: int
    epochs: int
    n_seeds: int
    n_val: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        for name in ("n_train", "n_params", "n_head", "epochs", "n_seeds", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"Shape.{name} must be >= 1, got {getattr(self, name)!r}.")


@dataclass
class Estimate:
    """A predicted wall time: `seconds`, the `parts` it sums (kind, units, seconds), and whether every
    part's rate was measured (`calibrated`; False = borrowed from another kind)."""

    seconds: float
    parts: list[tuple[str, float, float]] = field(default_factory=list)
    calibrated: bool = True
    load: float = 1.0

    @property
    def ask(self) -> bool:
        """Whether to show the estimate and ask before starting (more than `ASK_ABOVE_S`)."""
        return self.seconds > ASK_ABOVE_S

    def describe(self) -> str:
        """`about 45 s (training 20 s + trak 25 s)`, with `rough` when a rate was borrowed."""
        grouped: dict[str, float] = {}
        for kind, _, seconds in self.parts:
            label = _LABELS.get(kind, kind.split(":")[-1])
            grouped[label] = grouped.get(label, 0.0) + seconds
        parts = " + ".join(f"{k} {human_seconds(s)}" for k, s in grouped.items())
        rough = "; rough: no measurement of this kind on this machine yet" if not self.calibrated else ""
        busy = f"; the machine is busy: x{self.load:.1f}" if self.load > 1.2 else ""
        return f"about {human_seconds(self.seconds)} ({parts}{busy}{rough})"


def human_seconds(seconds: float) -> str:
    """`45 s`, `3 min 20 s`, `1 h 05 min`."""
    s = round(max(0.0, seconds))
    if s < 90:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Calibration:
    """Per-kind (fixed, rate): `DEFAULTS` overridden by the workspace's recorded observations."""

    def __init__(self, observations: dict[str, list[list[float]]] | None = None, load: float = 1.0) -> None:
        self.observations = {k: [list(map(float, o)) for o in v] for k, v in (observations or {}).items()}
        self.load = max(1.0, float(load))  # `load_factor()` now: CPU-bound work takes this much longer

    def fixed(self, kind: str) -> float:
        return DEFAULTS.get(kind, DEFAULTS[_FALLBACK_KIND])[0]

    def rate(self, kind: str) -> tuple[float, bool]:
        """(seconds per unit, measured?) of `kind`: the median observed rate, else the shipped one."""
        obs = self.observations.get(kind)
        if obs:
            fixed = self.fixed(kind)
            return statistics.median(max(s - fixed, 0.0) / u for u, s in obs if u > 0), True
        if kind in DEFAULTS:
            return DEFAULTS[kind][1], True
        return DEFAULTS[_FALLBACK_KIND][1], False

    def seconds(self, kind: str, units: float) -> tuple[float, bool]:
        rate, measured = self.rate(kind)
        return (self.fixed(kind) + rate * units) * self.load, measured


#: Slowdown = (load average per CPU) ** LOAD_EXPONENT, fitted on the demo's steps measured at loads 0.3-28 on
#: 2 cores (training 5 seeds: 12.5 s at load 0.3, 102 s at load 11, 87 s at load 23; TRAK, d-TDA and the map
#: 3-5x slower at load ~25 than at load 2-6): a linear factor over-estimated by about 2x at high load.
LOAD_EXPONENT = 0.8


def load_factor() -> float:
    """How much longer CPU-bound work takes now than on an idle machine, from the 1-minute load average per
    CPU (at least 1). Rates are stored per idle machine (recorded durations are divided by this)."""
    try:
        per_cpu = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 1.0
    return max(1.0, per_cpu) ** LOAD_EXPONENT


def load_calibration(ws: Workspace | None, load: float | None = None) -> Calibration:
    """The workspace's calibration (`DEFAULTS` alone when it has none or it is unreadable), for the machine's
    current `load_factor()` unless `load` is given."""
    load = load_factor() if load is None else load
    if ws is None:
        return Calibration(load=load)
    try:
        data = json.loads((ws.root / CALIBRATION_FILE).read_text())
        return Calibration(data.get("observations", {}), load)
    except (OSError, ValueError, AttributeError, TypeError):
        return Calibration(load=load)


def record_duration(
    ws: Workspace, parts: list[tuple[str, float, float]], seconds: float, load: float | None = None
) -> None:
    """Record a finished step's measured wall `seconds` against its estimate's `parts` (kind, units,
    predicted seconds): the time, divided by the load factor (`load`, default `load_factor()` now), is
    split over the parts in proportion to their prediction, and each part's kind keeps its last `KEEP`
    (units, idle seconds) observations. Written atomically."""
    if seconds <= 0 or not parts:
        return
    cal = load_calibration(ws, 1.0)
    predicted = sum(p for _, _, p in parts) or 1.0
    idle = seconds / (load_factor() if load is None else max(1.0, load))  # the time on an idle machine
    for kind, units, part in parts:
        if units <= 0:
            continue
        obs = cal.observations.setdefault(kind, [])
        obs.append([float(units), float(idle * part / predicted)])
        del obs[:-KEEP]
    ws.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ws.root / CALIBRATION_FILE, json.dumps({"observations": cal.observations}, indent=1))


def _n_models(settings: dict, n_seeds: int) -> int:
    """How many of the run's models a method uses, from its `n_models` / `seeds` setting."""
    for key in ("n_models", "seeds"):
        v = settings.get(key)
        if v is None or v == "all":
            continue
        if v == "first":
            return 1
        if isinstance(v, int):
            return max(1, min(v, n_seeds))
        if isinstance(v, list | tuple):
            return max(1, len(v))
    return n_seeds if "n_models" in settings or "seeds" in settings else 1


def _params(shape: Shape, settings: dict) -> int:
    return shape.n_head if settings.get("params") == "head" else shape.n_params


def _sum(parts: list[tuple[str, float]], cal: Calibration) -> Estimate:
    """The estimate of `parts` (kind, units): each kind's fixed seconds (once) plus rate x units."""
    out, calibrated = [], True
    for kind, units in parts:
        s, measured = cal.seconds(kind, units)
        calibrated &= measured
        out.append((kind, float(units), s))
    return Estimate(sum(s for _, _, s in out), out, calibrated, cal.load)


def training_parts(
    n_examples: float, shape: Shape, trainings: float = 1, batch_size: int | None = None
) -> list[tuple[str, float]]:
    """The two training parts of `trainings` trainings on `n_examples`: ("train:steps", optimisation steps)
    and ("train", examples x epochs x parameters)."""
    batch = batch_size or shape.batch_size
    steps = float(trainings) * shape.epochs * -(-int(max(1, n_examples)) // batch)
    return [("train:steps", steps), ("train", float(trainings) * n_examples * shape.epochs * shape.n_params)]


def estimate_training(shape: Shape, seeds: int, cal: Calibration | None = None) -> Estimate:
    """Training `seeds` new seeds of the recipe on `shape.n_train` examples (0 seeds: nothing to do)."""
    if seeds <= 0:
        return Estimate(0.0, [])
    return _sum(training_parts(shape.n_train, shape, seeds), cal or Calibration())


def estimate_attributor(
    method: str, settings: dict, shape: Shape, cal: Calibration | None = None, tuning_cached: bool = False
) -> Estimate:
    """Fitting `method` with its full `settings` (defaults filled in) and scoring `shape.n_query` queries.

    TRAK with `damping="auto"` and `tune_subsets` > 0 adds its held-out retrainings unless
    `tuning_cached` (they are stored per run)."""
    cal = cal or Calibration()
    models = _n_models(settings, shape.n_seeds)
    checkpoints = 5 if settings.get("checkpoints") == "all" or method == "tracin" else 1
    units = models * checkpoints * (shape.n_train + shape.n_query) * _params(shape, settings)
    parts = [(f"attr:{method}", units)]
    if _tunes(method, settings) and not tuning_cached:
        from tda_explorer.attributors.trak_tuning import TUNE_SUBSETS

        parts += training_parts(shape.n_train / 2, shape, int(settings.get("tune_subsets", TUNE_SUBSETS)))
    return _sum(parts, cal)


def _tunes(method: str, settings: dict) -> bool:
    """Whether `method` with these settings makes the held-out retrainings of an "auto" default."""
    if method == "trak":  # full settings (`full_settings`): "damping" is the one name
        auto = settings.get("damping", "auto") == "auto"
        return auto and settings.get("tune_subsets", 1) != 0
    if method == "influence":
        return (
            settings.get("solver", "ekfac") in ("ekfac", "kfac")
            and settings.get("damping") is None
            and settings.get("damping_factor", "auto") == "auto"
        )
    return False


def full_settings(method: str, settings: dict) -> dict:
    """`settings` with the method's defaults filled in and deprecated names mapped (what the estimate reads:
    params, models, ...); the settings as given when they don't validate (the step itself will say why)."""
    from tda_explorer.attributors import METHOD_SETTINGS

    if method not in METHOD_SETTINGS:
        return dict(settings)
    try:
        return METHOD_SETTINGS[method].build(method, **dict(settings)).as_dict()
    except ConfigError:
        return dict(settings)


def estimate_dtda(settings: dict, shape: Shape, cal: Calibration | None = None) -> Estimate:
    """d-TDA over the run's seeds (`settings["seeds"]`) with `settings["base"]` per seed."""
    base = settings.get("base", "influence")
    base_settings = {"params": "head", **dict(settings.get("base_settings") or {})}
    seeds = _n_models({"seeds": settings.get("seeds", "all")}, shape.n_seeds)
    units = seeds * (shape.n_train + shape.n_query) * _params(shape, base_settings)
    return _sum([(f"dtda:{base}", units)], cal or Calibration())


def estimate_retrainings(
    retrainings: float, keep_fraction: float, shape: Shape, cal: Calibration | None = None
) -> Estimate:
    """`retrainings` trainings of one seed on `keep_fraction` of the training set (LDS ground truth:
    subsets x seeds at alpha; pruning curve: one per fraction, pruned and random)."""
    return _sum(training_parts(shape.n_train * keep_fraction, shape, retrainings), cal or Calibration())


def estimate_map(n_points: int, first_in_process: bool, cal: Calibration | None = None) -> Estimate:
    """A UMAP layout of `n_points` (features included), plus numba's compilation on a process's first map."""
    cal = cal or Calibration()
    parts = [("map", float(n_points))] + ([("map:compile", 1.0)] if first_in_process else [])
    return _sum(parts, cal)


def run_shape(run, splits, query_split: str = "test") -> Shape:
    """The Shape of a `TrainedRun` on its `DatasetSplits` (parameters counted on the first seed's model)."""
    from tda_explorer.backend.grads import ParamSubset

    model = run.model(run.seeds[0])
    n_all = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        n_head = ParamSubset.resolve(model, "head").numel
    except ConfigError:
        n_head = n_all
    recipe = getattr(run, "train_config", None)
    epochs, batch = (recipe.epochs, recipe.batch_size) if recipe is not None else (1, 64)
    queries = getattr(splits, query_split)
    val = getattr(splits, "val", None)
    return Shape(
        n_train=len(splits.train), n_query=len(queries), n_params=n_all, n_head=max(1, n_head),
        epochs=int(epochs), n_seeds=len(run.seeds), n_val=0 if val is None else len(val), batch_size=int(batch),
    )  # fmt: skip


def training_shape(
    train, model_config, train_config, n_seeds: int, n_query: int = 0, n_val: int = 0
) -> Shape:
    """The Shape of a training on the ExampleSet `train` not run yet: the model is built once (untrained) to
    count its parameters."""
    from tda_explorer.backend.grads import ParamSubset
    from tda_explorer.models.build import build_model

    model = build_model(model_config, train.input_shape, train.n_classes)
    n_all = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        n_head = ParamSubset.resolve(model, "head").numel
    except ConfigError:
        n_head = n_all
    return Shape(
        n_train=len(train), n_query=n_query, n_params=n_all, n_head=max(1, n_head),
        epochs=int(train_config.epochs), n_seeds=max(1, int(n_seeds)), n_val=n_val,
        batch_size=int(train_config.batch_size),
    )  # fmt: skip


def new_seeds(ws: Workspace, splits, model_config, train_config, seeds) -> int:
    """How many of `seeds` have no trained model in `ws` yet (the ones a training would actually run)."""
    from tda_explorer.training.runs import _seed_config  # the per-seed artifact config train_run stores

    return sum(not ws.exists("models", _seed_config(splits, model_config, train_config, s)) for s in seeds)
