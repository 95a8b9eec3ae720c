"""TRAK (Park et al., 2023): projected margin gradients, a linearised-model kernel, averaged over models.

Per model m (a seed's final checkpoint, or every checkpoint with `checkpoints="all"`):
`Phi_m = P(g_margin(train))` `[N, k]` with `g_margin` the gradient of the margin
`f = log p_y / (1 - p_y)` and `P` a seeded random projection (k = `proj_dim`; no projection when None),
`Q_m = 1 - p_y(train)` `[N]`, and the kernel part `K_m(q) = phi_m(q) (Phi_m^T Phi_m + lambda I)^{-1} Phi_m^T`
(pseudo-inverse when lambda = 0 and the matrix is singular). By default (`damping="auto"`,
`attributors.trak_tuning`) lambda = c x `trace(Phi_m^T Phi_m) / N` with c chosen per run by a held-out
mini-LDS on the validation split (a few retrainings with the run's own recipe), or c = 2 without a
recipe: with k close to or above N, or many near-zero directions, the unregularised kernel interpolates
the training set and the scores lose their ranking, and the best lambda depends on the training recipe
(see `trak_tuning`; measurements in `benchmarks/RESULTS.md`, "Design measurements"). `damping=None` keeps
the previous rule, `damping_factor` x the mean nonzero eigenvalue `trace / min(k, N)`.

The kernel system is solved in the smaller space (a Cholesky factor, no explicit inverse):
`(Phi^T Phi + lambda I)^{-1}` `[k, k]` when k <= N, else `(Phi Phi^T + lambda I)^{-1}` `[N, N]` (the same
scores, since
`(Phi^T Phi + lambda I)^{-1} Phi^T = Phi^T (Phi Phi^T + lambda I)^{-1}`), so a wide Kronecker projection
costs `O(N^2 k)`, not `O(k^3)`. As in the paper's Algorithm 1:

    score[q, t] = (mean_m K_m(q))[t] * (mean_m Q_m)[t]

(TRAK's optional soft-thresholding is not applied). Sign: positive = t raises the query's margin, i.e.
helps it. Regression (`models.tasks`): the output function is the output `f`, `Q = y - f` (minus the
loss's derivative in `f`), and the query side is minus the kernel of the query's loss gradient, so that
positive still means "lowers the query's loss"; with no projection and lambda = N x wd this equals exact
influence on a ridge regression (tested). Scale: TRAK's own (a margin change, no 1/N) — compare within a method, not to influence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tda_explorer.attributors import base, trak_tuning
from tda_explorer.attributors.base import Attributor, register
from tda_explorer.attributors.method_settings import TRAKSettings
from tda_explorer.backend.device import get_device, get_dtype
from tda_explorer.backend.features import (
    gradient_features,
    group_matrix,
    true_class_probability,
)
from tda_explorer.backend.ghost import ghost_factors, ghost_supported
from tda_explorer.backend.grads import ParamSubset
from tda_explorer.backend.inverse import KernelInverse, KernelProblem, make_inverse, mean_nonzero_eigenvalue
from tda_explorer.backend.layers import find_layers
from tda_explorer.backend.projection import RandomProjector, kronecker_features, kronecker_sizes
from tda_explorer.backend.scoring import dot_scores
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import prepare_inputs
from tda_explorer.models.tasks import task_of
from tda_explorer.training.runs import TrainedRun


def _q_weights(model: torch.nn.Module, train: ExampleSet) -> torch.Tensor:
    """TRAK's `Q` `[N]` = minus the derivative of each training loss in the model output: `1 - p_y` for the
    margin (classification), the residual `y - f` for regression (loss `(f - y)^2 / 2`, output `f`)."""
    inputs = prepare_inputs(model, train.inputs)
    if task_of(model) != "regression":
        return 1 - true_class_probability(model, inputs, train.labels)
    device, dtype = get_device(), get_dtype()
    model = model.to(device, dtype).eval()
    with torch.no_grad():
        x = inputs.to(device)
        out = model(x.to(dtype) if x.is_floating_point() else x)
    if out.shape[-1] != 1:
        raise ConfigError(f"TRAK for regression needs one output per example, the model has {out.shape[-1]}.")
    return train.labels.to(device, dtype) - out[:, 0]


@dataclass
class _Model:
    """One TRAK model: the network, its projection, and its kernel solver in the smaller space.

    `dual` False: `kernel` solves with `Phi^T Phi + lambda I` `[k, k]` (k <= N); True: with
    `Phi Phi^T + lambda I` `[N, N]` (k > N). Both give the same scores
    (`(Phi^T Phi + lambda I)^{-1} Phi^T = Phi^T (Phi Phi^T + lambda I)^{-1}`). `phi` is the stored
    `[N, k]` train features, or None when they are recomputed on use (the Kronecker and SJLT
    projections, whose features cost about one backward pass).
    """

    model: torch.nn.Module
    projector: RandomProjector | None
    seed: int
    phi: torch.Tensor | None
    kernel: KernelInverse | None
    dual: bool
    regularization: float


@register
class TRAK(Attributor):
    """TRAK (see module docstring); settings: `TRAKSettings` (its `damping` / `damping_factor` were called
    `regularization` / `regularization_factor`: the old names are accepted with a DeprecationWarning and
    still name them in score-artifact keys, so cached scores stay valid)."""

    name = "trak"
    Settings = TRAKSettings
    settings: TRAKSettings
    #: Where "auto" caches its held-out retrainings (`scores.compute_scores` sets it), and the validation
    #: examples it holds out (default: the run's dataset's validation split). Not settings: no effect on
    #: the scores beyond the chosen lambda, which is recorded in `tuning_`.
    workspace = None
    validation: ExampleSet | None = None

    def _features(
        self, m: _Model, examples: ExampleSet, targets: torch.Tensor | None = None, objective: str = "margin"
    ) -> torch.Tensor:
        """Model m's projected gradients of `objective` at `targets` (default: the labels), `[n, k]`."""
        s = self.settings
        targets = examples.labels if targets is None else targets
        inputs = prepare_inputs(m.model, examples.inputs)
        model = m.model.to(get_device(), get_dtype()).eval()
        if s.proj_layout == "kronecker":
            sizes = kronecker_sizes(find_layers(model, ParamSubset.resolve(model, s.params)), s.proj_dim)
            return kronecker_features(
                model,
                inputs,
                targets,
                s.params,
                seed=m.seed,
                kind=s.proj_type,
                objective=objective,
                sizes=sizes,
            )
        if (
            m.projector is not None
            and m.projector.kind == "sjlt"
            and base.USE_GHOST
            and ghost_supported(m.model, s.params)
        ):  # Linear-only model: sketch each layer's ds a^T from its factors, no per-example backward
            return ghost_factors(model, inputs, targets, s.params, objective=objective).sketch(m.projector)
        if m.projector is not None and len(self.models_) > 1:  # keep one model's cached blocks at a time
            for other in self.models_:
                if other is not m and other.projector is not None and other.projector is not m.projector:
                    other.projector.release()
        return gradient_features(
            model=m.model,
            inputs=inputs,
            labels=targets,
            params=s.params,
            objective=objective,
            projector=m.projector,
        )

    def _train_features(self, m: _Model) -> torch.Tensor:
        return m.phi if m.phi is not None else self._features(m, self.train_)

    def fit(self, run: TrainedRun, train: ExampleSet) -> TRAK:
        """Per model: features, the kernel factorised in the smaller of the k / N spaces, and `Q = 1 - p_y`."""
        s = self.settings
        seeds = run.select_seeds("all" if s.n_models is None else s.n_models)
        ckpts = [-1] if s.checkpoints == "final" else range(len(run.checkpoints[seeds[0]]))
        models = [(seed, c) for seed in seeds for c in ckpts]
        p = ParamSubset.resolve(run.model(seeds[0]), s.params).numel
        per_model = s.proj_per_model
        shared = None
        if s.proj_dim is not None and s.proj_layout == "dense" and not per_model:
            shared = RandomProjector(p, s.proj_dim, s.proj_seed, s.proj_type)
        self.train_, self.models_ = train, []
        q = [_q_weights(run.model(seed, c), train) for seed, c in models]
        self.q_ = torch.stack(q).mean(0)
        heldout = self._heldout(run, train) if s.damping == "auto" else None
        grams, parts, scales = [], [], []
        for i, (seed, c) in enumerate(models):
            model = run.model(seed, c)
            proj_seed = s.proj_seed + (i if per_model else 0)
            projector = shared
            if s.proj_dim is not None and s.proj_layout == "dense" and per_model:
                projector = RandomProjector(p, s.proj_dim, proj_seed, s.proj_type)
            m = _Model(model, projector, proj_seed, None, None, False, 0.0)
            self.models_.append(m)
            phi = self._features(m, train)
            m.dual = phi.shape[1] > phi.shape[0]
            gram = phi.T @ phi if not m.dual else phi @ phi.T  # both have trace(Phi^T Phi)
            scales.append(mean_nonzero_eigenvalue(gram, len(train)))  # trace / N
            if isinstance(heldout, tuple):
                val, masks, _ = heldout
                group = torch.from_numpy(masks).to(phi) * self.q_.to(phi)
                parts.append(trak_tuning.spectral_parts(gram, m.dual, phi, self._features(m, val), group))
            m.phi, dtype = (phi if self._stores_features else None), phi.dtype
            del phi  # features that are cheap to recompute are not held while factorising
            if s.damping == "auto":
                grams.append((gram, dtype))
            else:
                damping = None if s.damping is None else float(s.damping)  # relative: x trace / min(k, N)
                m.kernel = make_inverse("kernel", KernelProblem(gram, gram.shape[0], dtype), damping=damping,
                                        damping_factor=s.damping_factor)  # fmt: skip
                m.regularization = m.kernel.info["damping"]
            del gram
            if self.progress is not None:
                self.progress(i + 1, len(models), f"trak: model {i + 1}/{len(models)} featurized")
        if s.damping == "auto":
            self.tuning_ = self._choose(heldout, parts, scales)
            for m, (gram, dtype) in zip(self.models_, grams, strict=True):
                problem = KernelProblem(gram, len(train), dtype)  # relative to trace / N, as `scales`
                m.kernel = make_inverse("kernel", problem, damping=None, damping_factor=self.tuning_.factor)
                m.regularization = m.kernel.info["damping"]
            self.artifact_extra_ = {
                "trak_regularization": {**self.tuning_.to_dict(), "lambdas": self.regularization_}
            }
        self.regression_ = task_of(self.models_[0].model) == "regression"
        self.n_train_ = len(train)
        self.fitted_ = True
        return self

    @property
    def _stores_features(self) -> bool:
        """Keep `Phi` `[N, k]` per model only when recomputing it costs a dense projection (a GEMM with
        `p x k` entries per example); Kronecker and SJLT features cost about one backward pass."""
        s = self.settings
        return s.proj_layout == "dense" and s.proj_type != "sjlt"

    @property
    def damping_(self) -> list[float]:
        """The lambda each model used (absolute)."""
        return [m.regularization for m in self.models_]

    regularization_ = damping_  # its name before damping became one name across methods

    def _heldout(self, run: TrainedRun, train: ExampleSet):
        """The held-out mini-LDS `(val, masks [M, N], losses [M, n])`, or the reason it cannot be made."""
        s = self.settings
        return trak_tuning.heldout_signal(
            run, train, s.tune_subsets, self.validation, self.workspace, s.tune_queries
        )

    def _choose(self, heldout, parts, scales) -> trak_tuning.Tuning:
        if not isinstance(heldout, tuple):
            return trak_tuning.Tuning(trak_tuning.AUTO_FACTOR, "fallback", reason=str(heldout))
        val, masks, losses = heldout
        factor, table = trak_tuning.choose_factor(parts, scales, losses)
        return trak_tuning.Tuning(
            factor, "validation-lds", table=table, n_subsets=len(masks), n_queries=len(val)
        )

    def kernel_scores(
        self, queries: ExampleSet, targets: torch.Tensor | None = None, objective: str = "margin"
    ) -> torch.Tensor:
        """`mean_m phi_m(q) (Phi_m^T Phi_m + lambda I)^{-1} Phi_m^T` `[n_query, N]` float32, without Q.

        `phi_m(q)` is the projected gradient of `objective` ("margin", or "loss") at `targets`.
        """
        self._check_fitted()
        total = 0
        for m in self.models_:
            v = self._features(m, queries, targets, objective)
            phi = self._train_features(m)
            if m.dual:
                total = total + m.kernel.solve(dot_scores(v, phi)).float().cpu()
            else:
                total = total + dot_scores(m.kernel.solve(v).to(phi), phi)
        return total / len(self.models_)

    def _query_kernel(self, queries: ExampleSet) -> torch.Tensor:
        """Kernel scores in our sign: of the margin (classification), or minus those of the query's loss
        (regression: the margin is the output, whose increase is not a help; see `_q_weights`)."""
        if self.regression_:
            return -self.kernel_scores(queries, objective="loss")
        return self.kernel_scores(queries)

    def score(self, queries: ExampleSet) -> torch.Tensor:
        """`[n_query, N]` float32 (positive = helps the query; TRAK scale)."""
        return self._query_kernel(queries) * self.q_.float().cpu()

    def self_influence(self) -> torch.Tensor:
        """`mean_m(phi_t^T (Phi^T Phi + lambda I)^{-1} phi_t) * mean_m(Q)_t` `[N]`, per example."""
        self._check_fitted()
        quad = 0
        for m in self.models_:
            phi = self._train_features(m)
            # primal: rowsum(Phi K^-1 * Phi); dual: diag(Phi Phi^T D) = rowsum(Phi * (D Phi))
            solved = m.kernel.solve(phi) if not m.dual else m.kernel.solve(phi.T).T
            quad = quad + solved.to(phi).mul(phi).sum(1)
        own = self.q_ if self.regression_ else 1.0  # regression: the loss gradient is -Q times the output's
        return (quad / len(self.models_) * self.q_ * own).float().cpu()

    def score_groups(self, queries: ExampleSet, groups: torch.Tensor) -> torch.Tensor:
        """`[n_query, n_groups]` = sum of member scores (Q-weighted group sums of the kernel scores)."""
        self._check_fitted()
        mask = group_matrix(groups, self.n_train_).float().cpu() * self.q_.float().cpu()
        return self._query_kernel(queries) @ mask.T
