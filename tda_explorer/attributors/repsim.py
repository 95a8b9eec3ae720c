"""RepSim: cosine similarity of penultimate representations, `score[q, t] = cos(h(q), h(t))`.

`h = model.features(x)` (the input to the head), at the final model of the chosen seeds (averaged).
Rank-only: the cosine in [-1, 1] has no loss scale; positive = similar representation, read as
"helps". Self-influence is `cos(h(t), h(t))` = 1 (0 for an all-zero representation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tda_explorer.attributors.base import FeatureDotAttributor, register
from tda_explorer.backend.features import representations, select_seeds
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.models import prepare_inputs
from tda_explorer.training.runs import TrainedRun


@register
class RepSim(FeatureDotAttributor):
    """RepSim (see module docstring).

    Args:
        seeds: "first", "all", an int n, or a list of run seeds (scores are averaged).
        batch_size: examples per forward pass.
    """

    name = "repsim"
    rank_only = True

    def __init__(
        self, seeds: str | int | Sequence[int] = "first", batch_size: int = 512, progress=None
    ) -> None:
        super().__init__(
            progress=progress,
            seeds=seeds if isinstance(seeds, (str, int)) else list(seeds),
            batch_size=batch_size,
        )

    def _features(self, examples: ExampleSet) -> list[torch.Tensor]:
        b = self.settings["batch_size"]
        return [representations(m, prepare_inputs(m, examples.inputs), b) for m in self.models_]

    def fit(self, run: TrainedRun, train: ExampleSet) -> RepSim:
        """Cache unit-norm train representations `[N, d]` per seed; returns self."""
        self.models_ = [run.model(s) for s in select_seeds(run, self.settings["seeds"])]
        self.train_features_ = self._features(train)
        self.n_train_ = len(train)
        self.fitted_ = True
        return self
