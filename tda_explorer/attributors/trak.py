"""TRAK (Park et al., 2023): projected margin gradients, a linearised-model kernel, averaged over models.

Per model m (a seed's final checkpoint, or every checkpoint with `checkpoints="all"`):
`Phi_m = P(g_margin(train))` `[N, k]` with `g_margin` the gradient of the margin
`f = log p_y / (1 - p_y)` and `P` a seeded random projection (k = `proj_dim`; no projection when None),
`Q_m = 1 - p_y(train)` `[N]`, and the kernel part `K_m(q) = phi_m(q) (Phi_m^T Phi_m + lambda I)^{-1} Phi_m^T`
(pseudo-inverse when lambda = 0 and the matrix is singular). By default lambda = `regularization_factor`
x the mean eigenvalue of `Phi_m^T Phi_m` (its trace / k), like influence's relative damping: with k close
to or above N the unregularised kernel interpolates the training set and the scores lose their ranking
(measured LDS, lambda = 0 -> 1 x mean eigenvalue: MNIST 5k logistic regression, 10 models, k = 2048:
0.47 -> 0.82; digits, 5 models, k = 512: 0.02 -> 0.78; factors 0.3 and 3 gave 0.70-0.81). As in the
paper's Algorithm 1:

    score[q, t] = (mean_m K_m(q))[t] * (mean_m Q_m)[t]

(TRAK's optional soft-thresholding is not applied). Sign: positive = t raises the query's margin, i.e.
helps it. Scale: TRAK's own (a margin change, no 1/N) — compare within a method, not to influence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tda_explorer.attributors.base import Attributor, register
from tda_explorer.backend.features import (
    gradient_features,
    group_matrix,
    select_seeds,
    true_class_probability,
)
from tda_explorer.backend.grads import ParamSubset
from tda_explorer.backend.projection import PROJECTIONS, RandomProjector
from tda_explorer.backend.scoring import dot_scores
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import prepare_inputs
from tda_explorer.training.runs import TrainedRun


def kernel_inverse(phi: torch.Tensor, regularization: float) -> torch.Tensor:
    """`(Phi^T Phi + lambda I)^{-1}` `[k, k]`, float64.

    Through a Cholesky factorisation (about 25x cheaper than the eigendecomposition behind `pinv`); when the
    matrix is singular (lambda = 0 and rank(Phi) < k) it falls back to the Hermitian pseudo-inverse.
    """
    xtx = phi.T.double() @ phi.double()
    xtx.diagonal().add_(regularization)
    factor, info = torch.linalg.cholesky_ex(xtx)
    if int(info) == 0:
        # cholesky_solve against I: torch.cholesky_inverse (LAPACK potri) is ~10x slower on CPU here
        return torch.cholesky_solve(torch.eye(len(xtx), dtype=xtx.dtype, device=xtx.device), factor)
    return torch.linalg.pinv(xtx, hermitian=True)


@register
class TRAK(Attributor):
    """TRAK (see module docstring).

    Args:
        proj_dim: projection size k (None = no projection, use raw gradients).
        proj_type: "rademacher" or "gaussian".
        proj_seed: projection seed (model i uses `proj_seed + i` with `proj_per_model`).
        proj_per_model: draw an independent projection for each model (default), as dattri does;
            averaging over models then also averages over projections (on MNIST logistic regression with
            10 models: LDS 0.75 -> 0.82 at regularization = mean eigenvalue of `Phi^T Phi`). False = one
            projection shared by all models.
        regularization: absolute lambda added to `Phi^T Phi` (0 = plain TRAK, pseudo-inverse); None
            (default) = `regularization_factor` x the mean eigenvalue of each model's `Phi^T Phi`.
        regularization_factor: the relative lambda used when `regularization` is None.
        n_models: number of run seeds used (None = all).
        checkpoints: "final" (one model per seed) or "all" (every checkpoint of each seed is a model).
        params: parameter subset ("all", "head", or name prefixes).
    """

    name = "trak"

    def __init__(
        self,
        proj_dim: int | None = 2048,
        proj_type: str = "rademacher",
        proj_seed: int = 0,
        regularization: float | None = None,
        regularization_factor: float = 1.0,
        n_models: int | None = None,
        checkpoints: str = "final",
        params: str | Sequence[str] = "all",
        proj_per_model: bool = True,
        progress=None,
    ) -> None:
        if proj_type not in PROJECTIONS:
            raise ConfigError(f"proj_type {proj_type!r} is not one of {PROJECTIONS}.")
        if proj_dim is not None and proj_dim < 1:
            raise ConfigError(f"proj_dim must be >= 1 (or None), got {proj_dim}.")
        if (regularization is not None and regularization < 0) or regularization_factor < 0:
            raise ConfigError(
                f"regularization and regularization_factor must be >= 0, got {regularization}, "
                f"{regularization_factor}."
            )
        if checkpoints not in ("final", "all"):
            raise ConfigError(f"checkpoints must be 'final' or 'all', got {checkpoints!r}.")
        super().__init__(
            progress=progress,
            proj_dim=proj_dim,
            proj_type=proj_type,
            proj_seed=proj_seed,
            regularization=regularization,
            regularization_factor=regularization_factor,
            n_models=n_models,
            checkpoints=checkpoints,
            params=params if isinstance(params, str) else list(params),
            proj_per_model=bool(proj_per_model),
        )

    def _features(
        self, model: torch.nn.Module, examples: ExampleSet, projector: RandomProjector | None = None
    ) -> torch.Tensor:
        inputs = prepare_inputs(model, examples.inputs)
        projector = self.projector_ if projector is None else projector
        return gradient_features(model, inputs, examples.labels, self.settings["params"], "margin", projector)

    def fit(self, run: TrainedRun, train: ExampleSet) -> TRAK:
        """Per model: `Phi [N, k]`, `(Phi^T Phi + lambda I)^{-1} [k, k]`, and `Q = 1 - p_y` (averaged)."""
        s = self.settings
        seeds = select_seeds(run, "all" if s["n_models"] is None else s["n_models"])
        ckpts = [-1] if s["checkpoints"] == "final" else range(len(run.checkpoints[seeds[0]]))
        models = [(seed, c) for seed in seeds for c in ckpts]
        p = ParamSubset.resolve(run.model(seeds[0]), s["params"]).numel
        per_model = s["proj_per_model"]
        self.projectors_ = [
            None
            if s["proj_dim"] is None
            else RandomProjector(p, s["proj_dim"], s["proj_seed"] + (i if per_model else 0), s["proj_type"])
            for i in range(len(models) if per_model else 1)
        ]
        self.projector_ = self.projectors_[0]
        self.models_, self.phi_, self.kinv_, self.regularization_, q = [], [], [], [], []
        for i, (seed, c) in enumerate(models):
            model = run.model(seed, c)
            phi = self._features(model, train, self._projector(i))
            self.models_.append(model)
            self.phi_.append(phi)
            lam = self._lambda(phi)
            self.regularization_.append(lam)
            self.kinv_.append(kernel_inverse(phi, lam).to(phi.dtype))
            q.append(1 - true_class_probability(model, prepare_inputs(model, train.inputs), train.labels))
            if self.progress is not None:
                self.progress(i + 1, len(models), f"trak: model {i + 1}/{len(models)} featurized")
        self.q_ = torch.stack(q).mean(0)
        self.n_train_ = len(train)
        self.fitted_ = True
        return self

    def _lambda(self, phi: torch.Tensor) -> float:
        """The lambda for one model's features `phi [N, k]` (absolute, or relative to trace / k)."""
        s = self.settings
        if s["regularization"] is not None:
            return float(s["regularization"])
        return s["regularization_factor"] * float(phi.double().square().sum()) / phi.shape[1]

    def _projector(self, i: int) -> RandomProjector | None:
        """Model i's projector; with one projector per model, the others' cached blocks are released."""
        if len(self.projectors_) == 1:
            return self.projectors_[0]
        for j, proj in enumerate(self.projectors_):
            if j != i and proj is not None:
                proj.release()
        return self.projectors_[i]

    def _query_vectors(self, queries: ExampleSet) -> list[torch.Tensor]:
        """Per model `x = (Phi^T Phi + lambda I)^{-1} phi(q)` as rows `[n_query, k]`, / number of models."""
        return [
            self._features(m, queries, self._projector(i)) @ kinv / len(self.models_)
            for i, (m, kinv) in enumerate(zip(self.models_, self.kinv_, strict=True))
        ]

    def score(self, queries: ExampleSet) -> torch.Tensor:
        """`[n_query, N]` float32 (positive = helps the query; TRAK scale)."""
        self._check_fitted()
        total = sum(
            dot_scores(x, phi) for x, phi in zip(self._query_vectors(queries), self.phi_, strict=True)
        )
        return total * self.q_.float().cpu()

    def self_influence(self) -> torch.Tensor:
        """`mean_m(phi_t^T (Phi^T Phi + lambda I)^{-1} phi_t) * mean_m(Q)_t` `[N]`, per example."""
        self._check_fitted()
        quad = torch.stack(
            [((phi @ kinv) * phi).sum(1) for phi, kinv in zip(self.phi_, self.kinv_, strict=True)]
        ).mean(0)
        return (quad * self.q_).float().cpu()

    def score_groups(self, queries: ExampleSet, groups: torch.Tensor) -> torch.Tensor:
        """`[n_query, n_groups]` = sum of member scores, via Q-weighted summed train features."""
        self._check_fitted()
        mask = group_matrix(groups, self.n_train_).to(self.q_) * self.q_
        vecs = self._query_vectors(queries)
        return sum(x @ (mask.to(phi) @ phi).T for x, phi in zip(vecs, self.phi_, strict=True)).float().cpu()
