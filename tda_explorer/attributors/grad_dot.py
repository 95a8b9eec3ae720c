"""Grad-Dot and Grad-Cos: inner product (or cosine) of per-example loss gradients at the final model.

`score[q, t] = g(q) . g(t)` with `g` the cross-entropy gradient over the chosen parameter subset,
averaged over the run's seeds when `seeds="all"`. Sign: a gradient step on t moves the weights along
`-g(t)`, changing the query loss by `-lr g(q).g(t)`, so a positive dot means t helps the query. Scale:
raw dot (not divided by N); Grad-Cos is rank-only (cosine in [-1, 1]).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from tda_explorer.attributors import base
from tda_explorer.attributors.base import FeatureDotAttributor, FeatureUnit, register
from tda_explorer.attributors.method_settings import GradSimilaritySettings
from tda_explorer.backend.ghost import GhostFactors, ghost_factors, ghost_supported
from tda_explorer.backend.grads import ParamSubset, example_grads
from tda_explorer.backend.layers import find_layers
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.models import prepare_inputs
from tda_explorer.training.runs import TrainedRun


class _GradientSimilarity(FeatureDotAttributor):
    normalize: bool = False
    Settings = GradSimilaritySettings
    settings: GradSimilaritySettings

    def _gradients(self, model: torch.nn.Module, examples: ExampleSet) -> torch.Tensor:
        g = example_grads(
            model, prepare_inputs(model, examples.inputs), examples.labels, params=self.settings.params
        )
        return F.normalize(g, dim=1) if self.normalize else g

    def _ghost(self, model: torch.nn.Module, examples: ExampleSet) -> GhostFactors:
        f = ghost_factors(
            model, prepare_inputs(model, examples.inputs), examples.labels, self.settings.params
        )
        return f.normalized() if self.normalize else f

    def _units(self) -> list[FeatureUnit]:
        """One unit per model, weight 1 / n_models; ghost factors for Linear-only models (same scores)."""
        model, params = self.models_[0], self.settings.params
        if self.ghost_:
            width = sum(i.d_in + i.d_out for i in find_layers(model, ParamSubset.resolve(model, params)))
            return [FeatureUnit(1 / len(self.models_), partial(self._ghost, m), width) for m in self.models_]
        width = ParamSubset.resolve(model, params).numel
        return [FeatureUnit(1 / len(self.models_), partial(self._gradients, m), width) for m in self.models_]

    def fit(self, run: TrainedRun, train: ExampleSet) -> _GradientSimilarity:
        """Load the final model(s); cache the train gradients `[N, p]` (or stream them when too large)."""
        seeds = run.seeds if self.settings.seeds == "all" else run.seeds[:1]
        self.models_ = [run.model(s) for s in seeds]
        self.ghost_ = base.USE_GHOST and ghost_supported(self.models_[0], self.settings.params)
        self._fit_units(train)
        if self.progress is not None:
            self.progress(1, 1, f"{self.name}: {len(train)} train gradients")
        return self


@register
class GradDot(_GradientSimilarity):
    """Grad-Dot: `g(q) . g(t)` (see module docstring)."""

    name = "grad_dot"


@register
class GradCos(_GradientSimilarity):
    """Grad-Cos: cosine of `g(q)` and `g(t)`; rank-only. Self-influence is 1 by definition."""

    name = "grad_cos"
    normalize = True
    rank_only = True
