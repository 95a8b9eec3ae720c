"""The Attributor protocol, its base class and the registry.

Conventions (every attributor follows them, whatever the paper's own sign):
- `score(queries)` returns float32 `[n_query, n_train]`; rows are queries.
- Positive score = the training example helps the query (up-weighting it lowers the query's loss).
- Influence-type scores are per removal of one example (1/N included), so summing a subset's scores
  predicts the change of the query loss when that subset is removed; rank-only methods say so.
- `self_influence()` is `[n_train]`, computed directly (never the diagonal of a train x train matrix).
- `score_groups(queries, groups)` with a boolean `groups [n_groups, n_train]` returns `[n_query, n_groups]`;
  the default sums member scores.

House habits (scikit-learn): `__init__` only stores settings; `fit` returns self; fitted state ends in `_`;
calling `score` before `fit` raises NotFittedError.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from tda_explorer.attributors.settings import MethodSettings
from tda_explorer.backend.device import get_dtype
from tda_explorer.backend.features import group_matrix
from tda_explorer.backend.ghost import GhostFactors
from tda_explorer.backend.scoring import dot_scores
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError, NotFittedError
from tda_explorer.training.runs import TrainedRun
from tda_explorer.training.trainer import Progress


class Attributor(ABC):
    """Base class. Subclasses set `name`, implement `fit`, `score`, `self_influence`."""

    name: ClassVar[str] = ""
    rank_only: ClassVar[bool] = False  # True when scores are meaningful only as a ranking (e.g. cosine)
    #: False when self-influence costs a pass per training example (exact replay): the score cache then
    #: stores NaN for it instead of running for hours; call `self_influence()` explicitly when wanted.
    cached_self_influence: ClassVar[bool] = True

    #: The method's settings dataclass (`method_settings`); `self.settings` is an instance of it.
    Settings: ClassVar[type[MethodSettings]] = MethodSettings

    def __init__(
        self, settings: MethodSettings | None = None, /, progress: Progress | None = None, **values: Any
    ) -> None:
        """Store the settings: a `Settings` instance, or the keyword values that build one (ConfigError
        naming the valid settings for an unknown name); keyword values given with an instance override it."""
        if settings is None:
            settings = self.Settings.build(self.name, **values)
        elif not isinstance(settings, self.Settings):
            raise ConfigError(f"{self.name} takes {self.Settings.__name__}, got {type(settings).__name__}.")
        elif values:
            settings = settings.replace(**values)
        self.progress = progress
        self.settings = settings

    def config(self) -> dict:
        """JSON-able identity of this attributor (name + settings), used in artifact keys."""
        return {"method": self.name, **self.settings.config()}

    def get_params(self) -> dict:
        """The settings as plain JSON-able values (`make_attributor(self.name, **params)` rebuilds it)."""
        return self.settings.as_dict()

    def clone(self, **changes: Any) -> Attributor:
        """An unfitted attributor of the same class with these settings changed (and the same progress)."""
        return type(self)(self.settings.replace(**changes), progress=self.progress)

    def _fit_seeds(self, run: TrainedRun, fit_seed: Callable[[int], Any], label: str) -> list:
        """`[fit_seed(s) for s in run.select_seeds(self.settings.seeds)]`, reporting `<label>: seed s fitted`
        to `self.progress` after each seed (for attributors that keep one fitted member per run seed)."""
        seeds = run.select_seeds(self.settings.seeds)
        members = []
        for i, seed in enumerate(seeds):
            members.append(fit_seed(seed))
            if self.progress is not None:
                self.progress(i + 1, len(seeds), f"{label}: seed {seed} fitted")
        return members

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"{self.name}: call fit(run, train) before score/self_influence.")

    @abstractmethod
    def fit(self, run: TrainedRun, train: ExampleSet) -> Attributor:
        """Compute the train-side cache; returns self."""

    @abstractmethod
    def score(self, queries: ExampleSet) -> torch.Tensor:
        """Scores `[n_query, n_train]` float32 (positive = helps the query)."""

    @abstractmethod
    def self_influence(self) -> torch.Tensor:
        """Each training example's score on itself, `[n_train]` float32."""

    def score_groups(self, queries: ExampleSet, groups: torch.Tensor) -> torch.Tensor:
        """Group scores `[n_query, n_groups]` = sum of member scores (groups: bool `[n_groups, n_train]`)."""
        groups = torch.as_tensor(groups)
        return self.score(queries) @ groups.to(torch.float32).T


#: Train features of a FeatureDotAttributor larger than this are not cached: scoring streams them.
FEATURE_CACHE_BYTES = int(os.environ.get("TDA_FEATURE_CACHE_BYTES", 2 * 2**30))
#: Bytes of train features computed at once when streaming.
STREAM_CHUNK_BYTES = 256 * 2**20


#: Use ghost dot products (`backend.ghost`) for gradient features of Linear-only models; tests turn it off
#: to compare with materialised gradients.
USE_GHOST = True


@dataclass(frozen=True)
class FeatureUnit:
    """One term of a feature-dot score: `weight * <features(q), features(t)>`.

    `features(examples)` returns a `[n, width]` tensor or `GhostFactors` (layer factors whose `dot` gives
    the same inner products); `width` = floats stored per example (for the memory estimate).
    """

    weight: float
    features: Callable[[ExampleSet], torch.Tensor | GhostFactors]
    width: int


def _dot(q: torch.Tensor | GhostFactors, t: torch.Tensor | GhostFactors) -> torch.Tensor:
    """`[len(q), len(t)]` float32 inner products, dense or ghost."""
    return q.dot(t) if isinstance(q, GhostFactors) else dot_scores(q, t)


def _sqnorm(t: torch.Tensor | GhostFactors) -> torch.Tensor:
    return (t.sqnorm() if isinstance(t, GhostFactors) else t.square().sum(1)).float().cpu()


class FeatureDotAttributor(Attributor):
    """Scores that are weighted sums of inner products of per-example features.

    `score[q, t] = sum_u w_u <f_u(q), f_u(t)>` over units u (TracIn: a seed's checkpoints, weight
    lr / n_seeds; RepSim, Grad-Dot/Cos: one per seed, weight 1 / n_seeds). Subclasses load their models in
    `fit`, then call `_fit_units(train)`, and implement `_units()`. The train features are cached when
    they fit in `FEATURE_CACHE_BYTES` (env `TDA_FEATURE_CACHE_BYTES`); otherwise (e.g. full gradients of
    a 235k-parameter MLP over several checkpoints) every call recomputes them chunk by chunk, so memory
    stays at one chunk plus the query features and the score matrix.
    """

    @abstractmethod
    def _units(self) -> list[FeatureUnit]:
        """The score's terms (available once the models are loaded in `fit`)."""

    def _fit_units(self, train: ExampleSet) -> None:
        units = self._units()
        itemsize = torch.finfo(get_dtype()).bits // 8
        self._train = train  # kept for streaming (not a fitted tensor: no trailing underscore)
        self.n_train_ = len(train)
        self.streaming_ = len(train) * sum(u.width for u in units) * itemsize > FEATURE_CACHE_BYTES
        self.train_features_ = None if self.streaming_ else [u.features(train) for u in units]
        self.fitted_ = True

    def _train_blocks(self, u: int, unit: FeatureUnit):
        """Yield `(start, features [b, d])` of the training set for unit u (cached, or computed in chunks)."""
        if not self.streaming_:
            yield 0, self.train_features_[u]
            return
        itemsize = torch.finfo(get_dtype()).bits // 8
        chunk = max(1, STREAM_CHUNK_BYTES // max(1, unit.width * itemsize))
        for a in range(0, self.n_train_, chunk):
            yield a, unit.features(self._train.subset(range(a, min(a + chunk, self.n_train_))))

    def score(self, queries: ExampleSet) -> torch.Tensor:
        """`[n_query, N]` float32: `sum_u w_u <f_u(q), f_u(t)>`."""
        self._check_fitted()
        out = torch.zeros(len(queries), self.n_train_, dtype=torch.float32)
        for u, unit in enumerate(self._units()):
            q = unit.features(queries)
            for a, t in self._train_blocks(u, unit):
                out[:, a : a + len(t)] += unit.weight * _dot(q, t)
        return out

    def self_influence(self) -> torch.Tensor:
        """`[N]` float32: `sum_u w_u ||f_u(t)||^2`."""
        self._check_fitted()
        out = torch.zeros(self.n_train_, dtype=torch.float32)
        for u, unit in enumerate(self._units()):
            for a, t in self._train_blocks(u, unit):
                out[a : a + len(t)] += unit.weight * _sqnorm(t)
        return out

    def score_groups(self, queries: ExampleSet, groups: torch.Tensor) -> torch.Tensor:
        """`[n_query, n_groups]` = sum of member scores, through summed group features."""
        self._check_fitted()
        mask = group_matrix(groups, self.n_train_)
        out = torch.zeros(len(queries), len(mask), dtype=torch.float64)
        for u, unit in enumerate(self._units()):
            q = unit.features(queries)
            for a, t in self._train_blocks(u, unit):
                block = mask[:, a : a + len(t)]
                if isinstance(q, GhostFactors):  # no feature sums for factors: go through the scores
                    out += unit.weight * (q.dot(t).double() @ block.T)
                else:
                    out += unit.weight * (q @ (block.to(t) @ t).T).double().cpu()
        return out.float()


ATTRIBUTORS: dict[str, type[Attributor]] = {}


def register(cls: type[Attributor]) -> type[Attributor]:
    """Class decorator: add an attributor to the registry under `cls.name`."""
    if not cls.name or cls.name in ATTRIBUTORS:
        raise ConfigError(f"attributor name {cls.name!r} is empty or already registered.")
    ATTRIBUTORS[cls.name] = cls
    return cls


def make_attributor(name: str, **settings: Any) -> Attributor:
    """An attributor by registry name with its settings.

    Raises:
        ConfigError: An unknown method or setting name (the message lists the valid names and the
            closest match), or a setting value the attributor refuses.
    """
    if name not in ATTRIBUTORS:
        import difflib

        close = difflib.get_close_matches(str(name), list(ATTRIBUTORS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown attributor {name!r}{hint}; choose one of {sorted(ATTRIBUTORS)}.")
    try:
        return ATTRIBUTORS[name](**settings)
    except TypeError as e:
        raise ConfigError(f"bad settings for attributor {name!r}: {e}") from e


def attributor_from_config(method_config: dict, progress: Progress | None = None) -> Attributor:
    """The attributor a score artifact's `config["method"]` describes (renamed settings mapped back)."""
    cls = ATTRIBUTORS[method_config["method"]]
    return cls(cls.Settings.from_config(method_config), progress=progress)
