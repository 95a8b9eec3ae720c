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
