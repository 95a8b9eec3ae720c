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

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError, NotFittedError
from tda_explorer.training.runs import TrainedRun
from tda_explorer.training.trainer import Progress


class Attributor(ABC):
    """Base class. Subclasses set `name`, implement `fit`, `score`, `self_influence`."""

    name: ClassVar[str] = ""
    rank_only: ClassVar[bool] = False  # True when scores are meaningful only as a ranking (e.g. cosine)

    def __init__(self, progress: Progress | None = None, **settings: Any) -> None:
        self.progress = progress
        self.settings = settings

    def config(self) -> dict:
        """JSON-able identity of this attributor (name + settings), used in artifact keys."""
        return {"method": self.name, **self.settings}

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


class FeatureDotAttributor(Attributor):
    """Scores that are inner products of per-example feature vectors, averaged over models.

    `score[q, t] = mean_m <f_m(q), f_m(t)>` (TracIn, RepSim, Grad-Dot/Cos). Subclasses implement
    `_features(examples) -> list of [n, d]` (one per model) and in `fit` set `train_features_` (that list
    for the training set) and `n_train_`. Self-influence is the mean squared norm, group scores use
    summed member features (no `[n_query, n_train]` matrix).
    """

    @abstractmethod
    def _features(self, examples: ExampleSet) -> list[torch.Tensor]:
        """Per model, the features `[n, d]` of `examples`."""

    def _pairs(self, queries: ExampleSet):
        return zip(self._features(queries), self.train_features_, strict=True)

    def score(self, queries: ExampleSet) -> torch.Tensor:
        """`[n_query, N]` float32, the mean over models of feature inner products."""
        from tda_explorer.backend.scoring import dot_scores

        self._check_fitted()
        return torch.stack([dot_scores(q, t) for q, t in self._pairs(queries)]).mean(0)

    def self_influence(self) -> torch.Tensor:
        """`[N]` float32: mean over models of each training example's squared feature norm."""
        self._check_fitted()
        return torch.stack([f.square().sum(1).float().cpu() for f in self.train_features_]).mean(0)

    def score_groups(self, queries: ExampleSet, groups: torch.Tensor) -> torch.Tensor:
        """`[n_query, n_groups]` = sum of member scores, through summed group features."""
        from tda_explorer.backend.features import group_matrix

        self._check_fitted()
        mask = group_matrix(groups, self.n_train_)
        return torch.stack([q @ (mask.to(t) @ t).T for q, t in self._pairs(queries)]).mean(0).float().cpu()


def check_damping(damping: float | None, damping_factor: float, weight_decay: float | None) -> None:
    """ConfigError unless damping (absolute, or None = relative), its factor and weight decay are >= 0."""
    if (damping is not None and damping < 0) or damping_factor < 0:
        raise ConfigError(f"damping and damping_factor must be >= 0, got {damping}, {damping_factor}.")
    if weight_decay is not None and weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}.")


def as_setting(value: Any) -> Any:
    """A str/int setting as is, any other sequence (parameter names, seeds) as a JSON-able list."""
    return value if isinstance(value, (str, int)) or value is None else list(value)


ATTRIBUTORS: dict[str, type[Attributor]] = {}


def register(cls: type[Attributor]) -> type[Attributor]:
    """Class decorator: add an attributor to the registry under `cls.name`."""
    if not cls.name or cls.name in ATTRIBUTORS:
        raise ConfigError(f"attributor name {cls.name!r} is empty or already registered.")
    ATTRIBUTORS[cls.name] = cls
    return cls


def make_attributor(name: str, **settings: Any) -> Attributor:
    """An attributor by registry name with its settings; ConfigError lists the known names."""
    if name not in ATTRIBUTORS:
        raise ConfigError(f"unknown attributor {name!r}; choose one of {sorted(ATTRIBUTORS)}.")
    try:
        return ATTRIBUTORS[name](**settings)
    except TypeError as e:
        raise ConfigError(f"bad settings for attributor {name!r}: {e}") from e
