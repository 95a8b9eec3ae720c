"""Source (Bae et al., 2024): attribution by approximate unrolled differentiation over training segments.

Training (T SGD steps) is split at checkpoints into L segments (`segments`, default 3; never across a
stage boundary of a multi-stage run, see `training.stages`). Segment l has `K_l` steps (sum of its
checkpoints' `segment_steps`), mean learning rate `eta_l` (step-weighted mean of `segment_mean_lr`;
heavy-ball momentum beta turns it into `eta_l / (1 - beta)`), an EK-FAC curvature `H_l` averaged over
the segment's checkpoints (`backend.curvature.fit_averaged`: averaged covariances, one eigenbasis,
averaged corrected eigenvalues, plus the stage's weight decay and a small damping), fitted on the
examples its stage trains on (`N_l` of them), and `g_l(z)` = the loss gradient of z averaged over the
same checkpoints (0 when z is not trained on in that stage). "The segment's checkpoints" are those
inside it plus, with `include_start` (default), the one it starts from (the previous segment's last,
also across a stage boundary: the next stage starts from those weights), which raised LDS on mnist5k
(`benchmarks/RESULTS.md`, "Design measurements").
With, elementwise in the EK-FAC eigenbasis of `H_l`,

    S_l = exp(-eta_l K_l H_l),        F_l = (I - exp(-eta_l K_l H_l)) H_l^{-1}

(`F(s) = -expm1(-eta K s) / s`, limit `eta K` at s = 0), removing z moves the final weights by

    r(z) = sum_l S_L ... S_{l+1} F_l g_l(z) / N_l        (accumulated forward: r <- S_l r + F_l g_l / N_l)

and `score[q, z] = grad loss(q; theta_T) . r(z)`: the predicted *increase* of the query loss when z is
removed. This is the paper's `v = grad f; for l = L..1: score += (F_l v) . g_l / N; v = S_l v`, with the
symmetric operators moved to the train side so that `r [N, p]` is computed once in `fit` (in chunks of
training examples; `r` stays in the current segment's eigenbasis between segments, `segment_step`).
Cost: per training example about 2L Kronecker rotations plus the gradients at the C checkpoints.

Sign and scale as influence functions: positive = z helps the query; per removal of one example (1/N
included). With L = 1 and `eta K -> inf`, `F(s) -> 1/s` and Source is EK-FAC influence with no damping;
for finite `eta K`, `F(s)` lies between `1/(s + 1/(eta K))` and 1.3x it (the paper's "damping 1/(eta K)").
Scores average over the chosen seeds. Adam is not modelled: its learning rate is used as is.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from tda_explorer.attributors.base import Attributor, register
from tda_explorer.attributors.method_settings import SourceSettings
from tda_explorer.backend.curvature import KroneckerCurvature, fit_averaged
from tda_explorer.backend.device import get_device, get_dtype
from tda_explorer.backend.features import gradient_features, group_matrix
from tda_explorer.backend.grads import ParamSubset
from tda_explorer.backend.inverse import CurvatureProblem
from tda_explorer.backend.layers import flat_to_layer, layer_to_flat
from tda_explorer.backend.scoring import dot_scores
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import prepare_inputs
from tda_explorer.training.config import TrainConfig
from tda_explorer.training.runs import TrainedRun


def segment_decay(s: torch.Tensor, eta_k: float) -> torch.Tensor:
    """`S(s) = exp(-eta K s)`: how much of an earlier perturbation survives a segment (in [0, 1] for s >= 0)."""
    return torch.exp(-eta_k * s)


def segment_response(s: torch.Tensor, eta_k: float) -> torch.Tensor:
    """`F(s) = (1 - exp(-eta K s)) / s`, stable: `eta K` at s = 0, `-> 1/s` for large `eta K s`, never NaN."""
    x = eta_k * s  # may overflow to inf (then F = 1/s) or underflow to 0 (then F = eta K)
    moved = x > 0
    safe_s = torch.where(moved, s, torch.ones_like(s))
    return torch.where(moved, -torch.expm1(-x) / safe_s, torch.full_like(s, eta_k))


def plan_segments(checkpoint_stages: Sequence[int], n_segments: int) -> list[list[int]]:
    """Group checkpoint indices into contiguous segments that never cross a stage boundary.

    Every stage gets at least one segment (so there are at least as many segments as stages) and at
    most one per checkpoint; the rest are shared out in proportion to the stages' checkpoint counts.
    Within a stage the checkpoints are split as evenly as possible, earlier segments taking the extra.

    Args:
        checkpoint_stages: stage index of each checkpoint, non-decreasing (`[c.stage for c in ckpts]`).
        n_segments: requested L (>= 1).

    Returns:
        L' lists of checkpoint indices, in training order, `max(n_stages, min(L, C))` of them.
    """
    stages = [int(s) for s in checkpoint_stages]
    if not stages or any(b < a for a, b in zip(stages, stages[1:], strict=False)):
        raise ConfigError(f"checkpoint stages must be non-empty and non-decreasing, got {stages}.")
    if n_segments < 1:
        raise ConfigError(f"segments must be >= 1, got {n_segments}.")
    groups: list[list[int]] = []
    for i, s in enumerate(stages):
        if i == 0 or s != stages[i - 1]:
            groups.append([])
        groups[-1].append(i)
    alloc = [1] * len(groups)
    for _ in range(max(0, n_segments - len(groups))):
        open_ = [k for k in range(len(groups)) if alloc[k] < len(groups[k])]
        if not open_:
            break
        k = max(open_, key=lambda k: (len(groups[k]) / alloc[k], -k))
        alloc[k] += 1
    return [
        [int(i) for i in part]
        for group, a in zip(groups, alloc, strict=True)
        for part in np.array_split(np.asarray(group), a)
    ]


def segment_step(
    curv: KroneckerCurvature,
    previous: KroneckerCurvature | None,
    rot: dict[str, torch.Tensor],
    grads: torch.Tensor,
    eta_k: float,
    n_examples: int,
) -> dict[str, torch.Tensor]:
    """One segment of `r <- S r + F g / N`, kept in the segment's EK-FAC eigenbasis.

    Args:
        curv: the segment's fitted curvature (eigenbasis `Q_S, Q_A`, shifted eigenvalues s).
        previous: the previous segment's curvature, whose basis `rot` is in (None for the first segment).
        rot: per layer the rotated response `[b, d_out, d_in]` so far (empty for the first segment).
        grads: flat `g_l` rows `[b, p]`.

    Returns:
        Per layer `exp(-eta K s) * B(rot) + F(s) * (Q_S^T G Q_A) / N` `[b, d_out, d_in]`, where `B` changes
        basis with `(Q_S^T Q_S') rot (Q_A'^T Q_A)` (one two-sided product instead of rotating out and in).
    """
    out = {}
    for info in curv.layers:
        f = curv.factors_[info.name]
        g = flat_to_layer(grads, info)
        rg = f.q_s.T.to(g) @ g @ f.q_a.to(g)
        shifted = (f.eigenvalues + curv.weight_decay + f.damping).clamp_min(0)
        new = segment_response(shifted, eta_k).to(rg) * rg / n_examples
        if previous is not None:
            p = previous.factors_[info.name]
            moved = (f.q_s.T @ p.q_s).to(rg) @ rot[info.name] @ (p.q_a.T @ f.q_a).to(rg)
            new = new + segment_decay(shifted, eta_k).to(rg) * moved
        out[info.name] = new
    return out


def from_eigenbasis(
    curv: KroneckerCurvature, rot: dict[str, torch.Tensor], like: torch.Tensor
) -> torch.Tensor:
    """Flat rows `[b, p]` (dtype/device of `like`) from per-layer matrices in `curv`'s eigenbasis."""
    out = torch.empty_like(like)
    for info in curv.layers:
        f = curv.factors_[info.name]
        layer_to_flat(f.q_s.to(like) @ rot[info.name] @ f.q_a.T.to(like), info, out)
    return out


@dataclass
class Segment:
    """One Source segment of a seed.

    Attributes:
        checkpoints: indices (into the seed's checkpoint list) of the checkpoints inside the segment.
        averaged: the checkpoints g_l and H_l average over (`checkpoints`, with `include_start` preceded
            by the checkpoint the segment starts from).
        stage: the training stage the segment lies in.
        steps: K_l, optimizer steps in the segment.
        lr: eta_l, step-weighted mean learning rate.
        eta: effective learning rate `eta_l / (1 - beta)` used in `exp(-eta K H)`.
        n_examples: N_l, examples the stage trains on (the segment's 1/N).
        weight_decay: added to H_l's eigenvalues.
        damping: per layer absolute damping used.
    """

    checkpoints: list[int]
    averaged: list[int]
    stage: int
    steps: int
    lr: float
    eta: float
    n_examples: int
    weight_decay: float
    damping: dict[str, float] = field(default_factory=dict)

    @property
    def eta_k(self) -> float:
        return self.eta * self.steps


@dataclass
class _Member:
    """One seed: final model, train responses `r [N, p]`, self-influence `[N]`, its segments."""

    model: torch.nn.Module
    responses: torch.Tensor
    self_influence: torch.Tensor
    segments: list[Segment]


@register
class Source(Attributor):
    """Source (see module docstring); settings: `SourceSettings`."""

    name = "source"
    Settings = SourceSettings
    settings: SourceSettings

    # ----------------------------------------------------------------------------------- fitting
    def _stage_info(self, run: TrainedRun, n: int) -> tuple[np.ndarray, list[TrainConfig]]:
        if run.stages is None:
            return np.ones((1, n), dtype=bool), [run.require_recipe("source")]
        return run.stages.masks(n), [s.train_config for s in run.stages.stages]

    def _segments(self, run: TrainedRun, seed: int, masks: np.ndarray, configs: list[TrainConfig]):
        s = self.settings
        ckpts = run.checkpoints[seed]
        for c in ckpts:
            c.require_schedule("source")
        stages = [c.stage for c in ckpts]
        if max(stages) >= len(configs):
            raise ConfigError(
                f"checkpoints name stage {max(stages)} but the run has {len(configs)} stage(s)."
            )
        out = []
        previous: list[int] = []
        for idx in plan_segments(stages, s.segments):
            stage = stages[idx[0]]
            cfg = configs[stage]
            steps = sum(ckpts[i].segment_steps for i in idx)
            if steps < 1:
                raise ConfigError(f"segment over checkpoints {idx} of seed {seed} has no training step.")
            lr = sum(ckpts[i].segment_mean_lr * ckpts[i].segment_steps for i in idx) / steps
            beta = s.momentum
            if beta is None:
                beta = cfg.momentum if cfg.optimizer == "sgd" else 0.0
            wd = cfg.weight_decay if s.weight_decay is None else s.weight_decay
            n_l = int(masks[stage].sum())
            averaged = previous[-1:] + idx if s.include_start else idx
            eta = float(lr / (1 - beta))
            out.append(Segment(idx, averaged, stage, int(steps), float(lr), eta, n_l, float(wd)))
            previous = idx
        return out

    def _curvature(
        self, model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor, wd: float
    ) -> KroneckerCurvature:
        """The (unfitted) EK-FAC curvature of one checkpoint over the examples its stage trains on, built by
        the same rule as influence's (`backend.inverse.CurvatureProblem`); Source applies spectral
        functions of it (`segment_step`), not its inverse."""
        s = self.settings
        problem = CurvatureProblem(
            model, inputs, labels, s.params, s.batch_size, seed=s.seed, fisher_samples=s.fisher_samples
        )
        return problem.kronecker(True, s.damping, s.damping_factor, wd)

    def _member(self, run: TrainedRun, seed: int, train: ExampleSet) -> _Member:
        s, dtype, n = self.settings, get_dtype(), len(train)
        masks, configs = self._stage_info(run, n)
        segments = self._segments(run, seed, masks, configs)
        models = {i: run.model(seed, i) for seg in segments for i in seg.averaged}
        final = run.model(seed, -1)
        inputs = {i: prepare_inputs(m, train.inputs) for i, m in models.items()}
        curvs = []
        for seg in segments:
            keep = torch.from_numpy(masks[seg.stage])
            members = [
                self._curvature(models[i], inputs[i][keep], train.labels[keep], seg.weight_decay)
                for i in seg.averaged
            ]
            curv = fit_averaged(members, [inputs[i][keep] for i in seg.averaged])
            seg.damping = {name: f.damping for name, f in curv.factors_.items()}
            curvs.append(curv)
        final_inputs = prepare_inputs(final, train.inputs)
        p = ParamSubset.resolve(final, s.params).numel
        responses = torch.empty(n, p, dtype=dtype, device=get_device())
        self_inf = torch.empty(n, dtype=dtype, device=get_device())
        for a in range(0, n, s.chunk_size):
            b = min(a + s.chunk_size, n)
            rot: dict[str, torch.Tensor] = {}
            for k, (seg, curv) in enumerate(zip(segments, curvs, strict=True)):
                g = sum(
                    gradient_features(models[i], inputs[i][a:b], train.labels[a:b], s.params, dtype=dtype)
                    for i in seg.averaged
                ) / len(seg.averaged)
                g[~torch.from_numpy(masks[seg.stage][a:b]).to(g.device)] = 0  # not trained on: no gradient
                rot = segment_step(curv, curvs[k - 1] if k else None, rot, g, seg.eta_k, seg.n_examples)
            r = from_eigenbasis(curvs[-1], rot, g)
            v = gradient_features(final, final_inputs[a:b], train.labels[a:b], s.params, dtype=dtype)
            responses[a:b] = r
            self_inf[a:b] = (v * r).sum(1)
        for seg in segments:
            if seg.eta_k * max(seg.damping.values(), default=0.0) > 50:
                warnings.warn(
                    f"source: segment over checkpoints {seg.checkpoints} has eta*K*damping > 50, so "
                    "the damping alone forgets everything before it; lower damping.",
                    stacklevel=3,
                )
                break
        return _Member(final, responses, self_inf, segments)

    def fit(self, run: TrainedRun, train: ExampleSet) -> Source:
        """Per seed: segments, averaged EK-FAC per segment, responses `r [N, p]`; returns self."""
        self.n_train_ = len(train)
        self.members_ = self._fit_seeds(run, lambda seed: self._member(run, seed, train), "source")
        self.fitted_ = True
        return self

    @property
    def segments_(self) -> list[list[dict]]:
        """Per seed, per segment: checkpoints (inside, averaged), stage, steps K, lr, effective eta, N_l, weight
        decay, damping, eta K."""
        self._check_fitted()
        return [[asdict(seg) | {"eta_k": seg.eta_k} for seg in m.segments] for m in self.members_]

    # ----------------------------------------------------------------------------------- scoring
    def _query_grads(self, m: _Member, queries: ExampleSet) -> torch.Tensor:
        inputs = prepare_inputs(m.model, queries.inputs)
        return gradient_features(m.model, inputs, queries.labels, self.settings.params, dtype=get_dtype())

    def score(self, queries: ExampleSet) -> torch.Tensor:
        """`[n_query, N]` float32: predicted increase of each query's loss when a train example is removed."""
        self._check_fitted()
        per_seed = [dot_scores(self._query_grads(m, queries), m.responses) for m in self.members_]
        return torch.stack(per_seed).mean(0)

    def self_influence(self) -> torch.Tensor:
        """`grad loss(z; theta_T) . r(z)` `[N]` float32, per example (no train x train matrix)."""
        self._check_fitted()
        return torch.stack([m.self_influence.float().cpu() for m in self.members_]).mean(0)

    def score_groups(self, queries: ExampleSet, groups: torch.Tensor) -> torch.Tensor:
        """`[n_query, n_groups]`: sum of member scores, via summed group responses (no `[n_query, N]`)."""
        self._check_fitted()
        mask = group_matrix(groups, self.n_train_)
        out = [self._query_grads(m, queries) @ (mask.to(m.responses) @ m.responses).T for m in self.members_]
        return torch.stack(out).mean(0).float().cpu()
