"""RepSim: cosine similarity of penultimate representations, `score[q, t] = cos(h(q), h(t))`.

`h = model.features(x)` (the input to the head), at the final model of the chosen seeds (averaged).
Rank-only: the cosine in [-1, 1] has no loss scale; positive = similar representation, read as
"helps". Self-influence is `cos(h(t), h(t))` = 1 (0 for an all-zero representation).
"""

from __future__ import annotations

from functools import partial

import torch

from tda_explorer.attributors.base import FeatureDotAttributor, FeatureUnit, register
from tda_explorer.attributors.method_settings import RepSimSettings
from tda_explorer.backend.features import representations
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.models import prepare_inputs
from tda_explorer.training.runs import TrainedRun


@register
class RepSim(FeatureDotAttributor):
    """RepSim (see module docstring); settings: `RepSimSettings`."""

    name = "repsim"
    rank_only = True
    Settings = RepSimSettings
    settings: RepSimSettings

    def _representations(self, model: torch.nn.Module, examples: ExampleSet) -> torch.Tensor:
        return representations(model, prepare_inputs(model, examples.inputs), self.settings.batch_size)

    def _units(self) -> list[FeatureUnit]:
        width = self.width_
        return [
            FeatureUnit(1 / len(self.models_), partial(self._representations, m), width) for m in self.models_
        ]

    def fit(self, run: TrainedRun, train: ExampleSet) -> RepSim:
        """Cache unit-norm train representations `[N, d]` per seed; returns self."""
        self.models_ = [run.model(s) for s in run.select_seeds(self.settings.seeds)]
        self.width_ = self._representations(self.models_[0], train.subset(range(min(1, len(train))))).shape[1]
        self._fit_units(train)
        return self
