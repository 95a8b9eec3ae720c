"""TracIn-CP (Pruthi et al., 2020): `score[q, t] = sum_c lr_c g_c(q) . g_c(t)` over a seed's checkpoints.

`g_c` is the cross-entropy gradient at checkpoint c over the chosen parameters (optionally randomly
projected to `proj_dim`, which preserves the dot products in expectation), `lr_c` the checkpoint's
`Checkpoint.lr` (learning rate of the step before it; `lr_source="segment_mean_lr"` uses the mean over
the segment instead). One `FeatureDotAttributor` unit per (seed, checkpoint), weight `lr_c / n_seeds`;
the train gradients are cached when they fit in memory, else recomputed chunk by chunk when scoring.

Sign: a step on t moves the weights by `-lr g(t)`, changing the query loss by about `-lr g(q).g(t)`,
so positive = t helps the query. Scale: TracIn's own (lr-weighted dot, no 1/N, no batch size).
"""

from __future__ import annotations

from functools import partial

import torch

from tda_explorer.attributors import base
from tda_explorer.attributors.base import FeatureDotAttributor, FeatureUnit, register
from tda_explorer.attributors.method_settings import TracInSettings
from tda_explorer.backend.features import gradient_features
from tda_explorer.backend.ghost import GhostFactors, ghost_factors, ghost_supported
from tda_explorer.backend.grads import ParamSubset
from tda_explorer.backend.layers import find_layers
from tda_explorer.backend.projection import RandomProjector
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.models import prepare_inputs
from tda_explorer.training.runs import TrainedRun


@register
class TracIn(FeatureDotAttributor):
    """TracIn-CP (see module docstring); settings: `TracInSettings`."""

    name = "tracin"
    Settings = TracInSettings
    settings: TracInSettings

    def _gradients(self, model: torch.nn.Module, examples: ExampleSet) -> torch.Tensor:
        inputs = prepare_inputs(model, examples.inputs)
        return gradient_features(
            model, inputs, examples.labels, self.settings.params, "loss", self.projector_
        )

    def _ghost(self, model: torch.nn.Module, examples: ExampleSet) -> GhostFactors:
        return ghost_factors(
            model, prepare_inputs(model, examples.inputs), examples.labels, self.settings.params
        )

    def _units(self) -> list[FeatureUnit]:
        """One unit per (seed, checkpoint): weight `lr_c / n_seeds`, features `g_c` (ghost factors for
        Linear-only models without projection: the same inner products, no `[n, p]` gradients)."""
        model, params = self.models_[0][0][1], self.settings.params
        features, width = self._gradients, self.width_
        if self.ghost_:
            features = self._ghost
            width = sum(i.d_in + i.d_out for i in find_layers(model, ParamSubset.resolve(model, params)))
        return [
            FeatureUnit(lr / len(self.models_), partial(features, m), width)
            for models in self.models_
            for lr, m in models
        ]

    def fit(self, run: TrainedRun, train: ExampleSet) -> TracIn:
        """Load every checkpoint of the chosen seeds and cache the train features; returns self."""
        s = self.settings
        seeds = run.select_seeds(s.seeds)
        for seed in seeds:
            for c in run.checkpoints[seed]:
                c.require_schedule("tracin", (s.lr_source,))
        self.models_ = [
            [(getattr(c, s.lr_source), run.model(seed, i)) for i, c in enumerate(run.checkpoints[seed])]
            for seed in seeds
        ]
        p = ParamSubset.resolve(self.models_[0][0][1], s.params).numel
        self.projector_ = (
            None if s.proj_dim is None else RandomProjector(p, s.proj_dim, s.proj_seed, s.proj_type)
        )
        self.width_ = p if self.projector_ is None else s.proj_dim
        model = self.models_[0][0][1]
        self.ghost_ = self.projector_ is None and base.USE_GHOST and ghost_supported(model, s.params)
        self._fit_units(train)
        if self.progress is not None:
            self.progress(1, 1, f"tracin: {len(train)} train gradients x {len(self.models_[0])} checkpoints")
        return self
