"""Influence functions: `score[q, t] = g(q)^T (H + (wd + lambda) I)^{-1} g(t) / N`.

`g` is the cross-entropy gradient over the chosen parameters at the final model of a seed, `N` the
number of training examples given to `fit`, `H` the Hessian of the *mean* training loss (no
regulariser), `wd` the run's weight decay (torch's coupled `weight_decay` minimises
`mean loss + wd/2 ||theta||^2`, whose Hessian is `H + wd I`; pass `weight_decay=0.0` to leave it out)
and `lambda` the damping. Scores average over the chosen seeds.

Sign and scale: removing t shifts the weights by about `(H + wd I)^{-1} g(t) / N`, so the score is the
predicted *increase* of the query loss when t is removed: positive = t helps the query (the classic
`I_up,loss = -g(q)^T H^{-1} g(t)` with the sign flipped and the removal's 1/N). Summing scores over a
subset predicts the loss change when that subset is removed.

Solvers: "ekfac" (default; EK-FAC eigenvalue-corrected K-FAC, layer-block-diagonal), "kfac", "exact"
(`[p, p]` Hessian, float64, small models), "cg" and "lissa" (iterative on exact HVPs; their
convergence is recorded in `solve_info_`). Default damping: `damping_factor x mean eigenvalue`
(per layer for K-FAC/EK-FAC, of the whole H for the others; Hutchinson estimate for cg/lissa), with the
factor depending on the solver (`DEFAULT_DAMPING_FACTOR`).
`damping_factor="auto"` (EK-FAC / K-FAC) chooses the shift on a held-out validation mini-LDS, with
and without the run's `wd` (`weight_decay_choices`); the choice is kept in `solve_info_[i]["tuning"]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tda_explorer.attributors import base, trak_tuning
from tda_explorer.attributors.base import Attributor, register
from tda_explorer.attributors.method_settings import DEFAULT_DAMPING_FACTOR, InfluenceSettings
from tda_explorer.backend.device import get_dtype
from tda_explorer.backend.features import gradient_features, group_matrix
from tda_explorer.backend.ghost import GhostFactors, ghost_factors, ghost_supported
from tda_explorer.backend.grads import ParamSubset
from tda_explorer.backend.inverse import CurvatureProblem, InverseOperator, KroneckerInverse, make_inverse
from tda_explorer.backend.scoring import dot_scores
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.models import prepare_inputs
from tda_explorer.training.runs import TrainedRun

#: `DEFAULT_DAMPING_FACTOR` (in `method_settings`): `damping_factor` when none is given, per solver. The
#: Kronecker solvers keep kronfluence's 0.1 (x each layer's mean eigenvalue); the solvers of the true H
#: want about 10x more (exact influence's LDS on MNIST logistic regression and sklearn digits peaked near
#: 1: the models are trained for a finite number of steps, so the curvature's smallest directions never
#: reach the minimiser the undamped inverse assumes). CG / LiSSA stopping rules: `backend.inverse`.
#: Candidate relative damping factors of EK-FAC / K-FAC's damping_factor="auto" (x each layer's mean
#: eigenvalue): the best fixed factor on our digits protocols ranged 0.001-3 (robustness.py).
AUTO_DAMPING_FACTORS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SELF_CHUNK = 1024


def weight_decay_choices(declared: float) -> tuple[float, ...]:
    """The L2 shifts "auto" tries under its damping candidates: the run's weight decay and, when it is > 0,
    none.

    Why not always the declared one: wd is the exact curvature of the L2 term, but EK-FAC's eigenvalues are
    the diagonal of the curvature in an approximate eigenbasis, and by Schur-Horn the k smallest diagonal
    entries sum to at least the k smallest eigenvalues: the approximation is already damped in the small
    directions where wd matters. On digits logistic regression trained to convergence by L-BFGS with
    wd = 1e-3 (`benchmarks/robustness.py`) EK-FAC's best total shift was about 0.1 x the mean eigenvalue
    (4e-4 < wd), out of reach with wd as a floor, while the exact Hessian did best with wd added.
    """
    return (declared, 0.0) if declared > 0 else (declared,)


#: Bytes of dense inverse-HVP query vectors held at once (score / score_groups): 256 MiB is 285 queries
#: on the MNIST MLP (p = 235k, float32) and every query at once on small models, where iterative solvers
#: need the whole batch (a CG iteration costs about the same for 128 right-hand sides as for 500).
QUERY_BYTES = 256 * 2**20


@dataclass
class _Member:
    """One member's model, train gradients and damped inverse-Hessian operator (`backend.inverse`).

    The train gradients are `[N, p]`, or their ghost factors for Linear-only models (`backend.ghost`:
    the per-layer inputs and output gradients, 25 MB instead of 3.8 GB on the MNIST MLP); `dot`, `rows`
    and `group_sum` work on either.
    """

    model: torch.nn.Module
    train_grads: torch.Tensor | GhostFactors
    inverse: InverseOperator  # rows g [b, p] -> (H + shift I)^{-1} g; g^T (H + shift I)^{-1} g  [b]
    tuning: dict | None = None

    @property
    def info(self) -> dict:
        """The solve's record (damping used; cg / lissa solves), with the "auto" tuning when there was one."""
        return {**self.inverse.info, **({"tuning": self.tuning} if self.tuning is not None else {})}

    def dot(self, v: torch.Tensor) -> torch.Tensor:
        """`v [m, p] @ train_grads.T`: float32 `[m, N]` on the CPU."""
        g = self.train_grads
        return g.dot_dense(v) if isinstance(g, GhostFactors) else dot_scores(v, g)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Dense train gradients `[stop - start, p]` of examples `start:stop`."""
        g = self.train_grads
        return g.dense(start, min(stop, len(g))) if isinstance(g, GhostFactors) else g[start:stop]

    def group_sum(self, mask: torch.Tensor) -> torch.Tensor:
        """Summed train gradients of each group, `[n_groups, p]` (mask `[n_groups, N]`)."""
        g = self.train_grads
        return g.group_sum(mask) if isinstance(g, GhostFactors) else mask.to(g) @ g


@register
class Influence(Attributor):
    """Influence functions (see module docstring); settings: `InfluenceSettings`."""

    name = "influence"
    Settings = InfluenceSettings
    settings: InfluenceSettings
    #: Where "auto" caches its held-out retrainings and the validation examples it holds out (set by
    #: `scores.compute_scores`; default: no cache, the run's dataset's validation split).
    workspace = None
    validation: ExampleSet | None = None

    # ----------------------------------------------------------------------------------- fitting
    def _dtype(self) -> torch.dtype:
        return torch.float64 if self.settings.solver == "exact" else get_dtype()

    def _damping_factor(self) -> float:
        """The relative damping: the setting, or the solver's `DEFAULT_DAMPING_FACTOR` (None, and the start
        of "auto")."""
        factor = self.settings.damping_factor
        return DEFAULT_DAMPING_FACTOR[self.settings.solver] if factor in (None, "auto") else factor

    def _tune(self, op: KroneckerInverse, model: torch.nn.Module, grads) -> dict:
        """damping_factor="auto" for EK-FAC / K-FAC: the shift whose predictions best rank the held-out
        mini-LDS of `trak_tuning.heldout_signal` (validation split, the run's recipe, never the evaluation).

        Candidates: `factor x` each layer's mean eigenvalue for every factor of `AUTO_DAMPING_FACTORS`, on top
        of the run's weight decay and, when it is > 0, also without it (`weight_decay_choices`); the best grid
        point's family wins (ties keep the weight decay), its factor refined between grid points. The
        validation gradients and the subsets' summed train gradients are rotated into the eigenbasis once
        (`KroneckerInverse.bilinear_family`): a candidate costs one division and one product per layer.
        """
        if not isinstance(self.heldout_, tuple):
            return {"factor": op.curvature.damping_factor, "rule": "fallback", "reason": self.heldout_}
        val, masks, losses = self.heldout_
        inputs = prepare_inputs(model, val.inputs)
        g_val = gradient_features(model, inputs, val.labels, self.settings.params, dtype=self._dtype())
        sums = _Member(model, grads, op).group_sum(torch.from_numpy(masks))  # [M, p]
        predict_at = op.bilinear_family(g_val, sums.to(g_val))  # (factor, wd) -> [n_val, M]
        declared = float(op.curvature.weight_decay)
        found = {}
        for wd in weight_decay_choices(declared):
            found[wd] = trak_tuning.score_table(
                lambda c, wd=wd: predict_at(c, wd).double().cpu(), losses, AUTO_DAMPING_FACTORS
            )
        peak = {
            wd: max((v for v in t.values() if v == v), default=float("-inf")) for wd, (_, t) in found.items()
        }
        wd = max(found, key=lambda w: (peak[w], w == declared))
        best, table = found[wd]
        op.set_weight_decay(wd)
        op.set_damping_factor(best if best == best else self._damping_factor())  # NaN: keep the default
        out = {
            "factor": op.curvature.damping_factor,
            "rule": "validation-lds",
            "weight_decay": wd,
            "table": {str(k): v for k, v in table.items()},
        }
        if len(found) > 1:
            out["declared_weight_decay"] = declared
            out["table_other_weight_decay"] = {
                str(k): v for w, (_, t) in found.items() if w != wd for k, v in t.items()
            }
        return out

    def _member(self, model: torch.nn.Module, train: ExampleSet, wd: float, progress=None) -> _Member:
        """The member's train gradients and its inverse operator (built by `backend.inverse.make_inverse`)."""
        s = self.settings
        inputs = prepare_inputs(model, train.inputs)
        if base.USE_GHOST and ghost_supported(model, s.params):
            grads = ghost_factors(model, inputs, train.labels, s.params, dtype=self._dtype())
        else:
            grads = gradient_features(model, inputs, train.labels, s.params, dtype=self._dtype())
        problem = CurvatureProblem(
            model, inputs, train.labels, s.params, s.batch_size, self._dtype(), s.curvature, s.seed,
            s.fisher_samples, progress,
        )  # fmt: skip
        op = make_inverse(
            s.solver, problem, damping=s.damping, damping_factor=self._damping_factor(), weight_decay=wd,
            max_iter=s.max_iter, tol=s.tol, preconditioner=s.preconditioner,
        )  # fmt: skip
        auto = isinstance(op, KroneckerInverse) and s.damping is None and s.damping_factor == "auto"
        return _Member(model, grads, op, self._tune(op, model, grads) if auto else None)

    def fit(self, run: TrainedRun, train: ExampleSet) -> Influence:
        """Per member (seed, or seed x checkpoint): train gradients `[N, p]` and the damped inverse-Hessian
        operator; returns self."""
        seeds = run.select_seeds(self.settings.seeds)
        wd = run.weight_decay if self.settings.weight_decay is None else self.settings.weight_decay
        self.n_train_ = len(train)
        self.weight_decay_ = float(wd)
        self.members_ = []
        s = self.settings
        auto = s.solver in ("ekfac", "kfac") and s.damping is None and s.damping_factor == "auto"
        self.heldout_ = (
            trak_tuning.heldout_signal(
                run, train, s.tune_subsets, self.validation, self.workspace, s.tune_queries
            )
            if auto
            else None
        )
        final = self.settings.checkpoints == "final"
        members = [
            (seed, c) for seed in seeds for c in ([-1] if final else range(len(run.checkpoints[seed])))
        ]

        def within(i: int):  # a member's factor fitting, as a share of the whole fit
            if self.progress is None:
                return None
            return lambda done, total, msg: self.progress(
                i * total + done, len(members) * total, f"influence: member {i + 1}/{len(members)}, {msg}"
            )

        for i, (seed, c) in enumerate(members):
            self.members_.append(self._member(run.model(seed, c), train, float(wd), within(i)))
            if self.progress is not None:
                self.progress(
                    i + 1,
                    len(members),
                    f"influence/{self.settings.solver}: seed {seed} checkpoint {c} fitted",
                )
        tunings = [m.info["tuning"] for m in self.members_ if "tuning" in m.info]
        if tunings:
            self.artifact_extra_ = {"influence_damping": tunings}
        self.fitted_ = True
        return self

    @property
    def solve_info_(self) -> list[dict]:
        """Per seed: damping used and, for cg/lissa, every solve's iterations / residual / converged."""
        self._check_fitted()
        return [m.info for m in self.members_]

    # ----------------------------------------------------------------------------------- scoring
    def _query_vector(self, m: _Member, queries: ExampleSet) -> torch.Tensor:
        """One seed's `(H + shift I)^{-1} g(q) / N` `[n_query, p]` (dense: callers pass QUERY_BYTES of rows)."""
        inputs = prepare_inputs(m.model, queries.inputs)
        g = gradient_features(m.model, inputs, queries.labels, self.settings.params, dtype=self._dtype())
        return m.inverse.solve(g) / self.n_train_

    def _per_query(
        self, queries: ExampleSet, train_side: Callable[[_Member], Callable[[torch.Tensor], torch.Tensor]]
    ) -> torch.Tensor:
        """Mean over seeds of `train_side(member)(query vectors)`, one seed and QUERY_BYTES of queries at a time.

        The inverse-HVP query vectors are dense `[n, p]` (p = 235k on the MNIST MLP: 0.5 GB for 500
        queries per seed); chunking bounds them to QUERY_BYTES whatever the number of queries or seeds.
        `train_side(member)` is built once per seed (e.g. its group-summed gradients) and dropped after it.
        """
        total = 0
        for m in self.members_:
            p = ParamSubset.resolve(m.model, self.settings.params).numel
            step = max(1, QUERY_BYTES // (p * torch.finfo(self._dtype()).bits // 8))
            side, parts = train_side(m), []
            for a in range(0, len(queries), step):
                chunk = queries.subset(range(a, min(a + step, len(queries))))
                parts.append(side(self._query_vector(m, chunk)).float().cpu())
            total = total + torch.cat(parts)
        return total / len(self.members_)

    def score(self, queries: ExampleSet) -> torch.Tensor:
        """`[n_query, N]` float32: predicted increase of each query's loss when a train example is removed."""
        self._check_fitted()
        return self._per_query(queries, lambda m: m.dot)

    def self_influence(self) -> torch.Tensor:
        """`g(t)^T (H + shift I)^{-1} g(t) / N` `[N]` float32, computed per example (quadratic form)."""
        self._check_fitted()
        per_seed = []
        for m in self.members_:
            step = m.train_grads.chunk_rows() if isinstance(m.train_grads, GhostFactors) else SELF_CHUNK
            parts = [m.inverse.quadratic(m.rows(s, s + step)) for s in range(0, self.n_train_, step)]
            per_seed.append(torch.cat(parts).float().cpu() / self.n_train_)
        return torch.stack(per_seed).mean(0)

    def score_groups(self, queries: ExampleSet, groups: torch.Tensor) -> torch.Tensor:
        """`[n_query, n_groups]`: sum of member scores, via summed group gradients (no `[n_query, N]`)."""
        self._check_fitted()
        mask = group_matrix(groups, self.n_train_)

        def against_groups(m: _Member) -> Callable[[torch.Tensor], torch.Tensor]:
            sums = m.group_sum(mask)  # [n_groups, p], this seed only
            return lambda v: v @ sums.to(v).T

        return self._per_query(queries, against_groups)
