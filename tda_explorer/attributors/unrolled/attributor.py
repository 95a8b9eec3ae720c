"""The `unrolled` attributor: exact derivatives of the query loss w.r.t. data weights, through all of training.

Training (this package's seeded trainer, `training.weighted`) takes steps
`theta_{t+1} = U_t(theta_t, state_t, g_t)` with `g_t = (1/B_t) sum_{i in B_t} w_i grad l_i(theta_t)` and
all weights `w = 1`. For each chosen seed the run is replayed exactly (same init, batch order, dropout
masks; bit for bit in float32) and the query measurement `m(q) = loss(q; theta_T)` (eval mode) is
differentiated backwards through every step (`reverse`: SGD, heavy-ball momentum, Adam with bias
correction, warm-up / cosine / linear schedules, weight decay, multi-stage runs) to `dm(q)/dw_i`.

    score[q, i] = -dm(q)/dw_i

is the first-order change of the query loss when example i's weight goes from 1 to 0 in every batch
it belongs to, batches otherwise unchanged and still divided by their full size ("fixed-seed removal",
what `evaluation.lds` mode "fixed" retrains). Positive = i helps q. The scale is the real one: the
`1/B` of the batch mean plays the role of influence's `1/N`, so a subset's summed scores predict the
change of this run's query loss when the subset is removed (to first order). Scores average over the
chosen seeds. `score_groups` (the default) sums member scores: the first-order effect of removing the
group. `self_influence` runs the training examples themselves as queries: its cost is `N / n_query`
times that of `score`.

Cost, T steps, p parameters, batch B: `ceil(Q / chunk)` reverse passes for Q queries, each per step one
vector-Jacobian product of the batch gradient with `chunk` cotangents. Two implementations (`reverse`):
autograd's double backward (any model; one forward replay of each segment per pass, about 3 gradient
evaluations per query and step), and for Linear/ReLU chains without dropout (the zoo's `mlp`, `logreg`)
a closed-form R-operator step (`chain`: about two products of the first layer's size per query and
step). For chains trained by SGD (with or without momentum) `fit` also keeps a tape of what that step
needs (the layers after the first, their inputs and the logits, per step), so the reverse pass replays
nothing: a query then costs about one training's worth of compute, not three. Memory (itemsize s,
optimizer state vectors n_s = 0 SGD / 1 momentum / 2 Adam, snapshot every k steps):

    (ceil(T / k) + n_stages) * p * (1 + n_s) * s     snapshots (parameters + optimizer state)
  + k * p * (1 + 2 [Adam]) * s                       one replayed segment (+ Adam's moments per step)
  + T * (5 KB + 8 B)                                 RNG state and batch indices per step
  + T * (p_rest + B * (d_1 + ... + C)) * s           the chain tapes, if all seeds' fit in `memory_bytes`
  + chunk * p * (1 + n_s) * s * ~4                   cotangents and the vmapped product's work
  + Q * N * 8                                        the result (float64)

(p_rest = the parameters after the first layer, d_l the hidden widths, C the classes: 225 MB for the
demo's MLP at 945 steps of 64). k = ceil(sqrt(T)) by default (`every`) balances the first two; `chunk`
comes from `memory_bytes` too (so tapes and cotangents take at most about twice it). The compute does
not depend on k (each segment is replayed once per reverse pass); only memory does. Per query and step the reverse pass needs one Hessian-vector product of the
batch loss, so Q queries cost about Q times one training in compute whatever the batching; batching
over queries only removes per-step overhead (the `[chunk, p]` cotangent updates are memory-bound).

Exact is not the same as predictive: the derivative is exact for infinitesimal weight changes (finite
differences of real retraining agree to ~1e-8 in the float64 tests), but a ReLU network trained at a large
effective learning rate is not "metasmooth" (Engstrom et al., 2025): its final weights do not respond
linearly to weight changes of the size of a subset removal, and first-order predictions lose their
ranking. `smooth.metasmoothness` measures this with three trainings; `smooth.SMOOTH_RECIPES` holds named
recipes chosen for it, and `benchmarks/unrolled_smooth.py` measures LDS against recipe and removed fraction.
On small or smooth problems (convex models, small learning rates) it is near-perfect.
Requires a run made by this package's trainer (`train_run` / `train_stages`); `fit` checks that the
replay reproduces the run's final weights and warns if not.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from tda_explorer.attributors.base import Attributor, register
from tda_explorer.attributors.method_settings import UnrolledSettings
from tda_explorer.attributors.unrolled.replay import Trajectory
from tda_explorer.attributors.unrolled.reverse import measurement_gradients, reverse_pass
from tda_explorer.backend.device import get_dtype
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import prepare_inputs
from tda_explorer.training.runs import TrainedRun
from tda_explorer.training.stages import run_training_config

#: Replayed final weights further than this (max abs difference / max(1, max abs weight)) from the
#: run's final checkpoint trigger a warning: the replay is not the run.
REPLAY_TOLERANCE = 1e-4


@dataclass
class _Member:
    """One seed: its recorded trajectory and final flat parameters `[p]`."""

    seed: int
    trajectory: Trajectory
    theta: torch.Tensor
    replay_gap: float


def replay_gap(final: torch.Tensor, traj: Trajectory, state: dict[str, torch.Tensor]) -> float:
    """Max abs difference between replayed and stored final trainable weights, relative to max(1, max |w|)."""
    stored = torch.cat([state[n].reshape(-1).to(final) for n in traj.flat.names])
    return float((final - stored).abs().max() / max(1.0, float(stored.abs().max())))


@register
class Unrolled(Attributor):
    """Exact unrolled differentiation (see module docstring).

    Settings: `UnrolledSettings` (seeds, every, query_chunk, memory_bytes).
    """

    name = "unrolled"
    Settings = UnrolledSettings
    settings: UnrolledSettings
    cached_self_influence = False

    # ----------------------------------------------------------------------------------- fitting
    def fit(self, run: TrainedRun, train: ExampleSet) -> Unrolled:
        """Replay each chosen seed once, keeping snapshots every k steps; returns self."""
        if run.train_config is None:
            raise ConfigError("unrolled needs the run's training recipe (train_config); this run has none.")
        recipe = run_training_config(run)
        seeds = run.select_seeds(self.settings.seeds)
        self.n_train_, self.members_ = len(train), []
        for i, seed in enumerate(seeds):
            traj = Trajectory(
                run.model_config,
                recipe,
                train,
                seed,
                get_dtype(),
                self.settings.every,
                self.settings.memory_bytes // len(seeds),  # the tapes of all seeds share the budget
            )
            theta = traj.record()
            gap = replay_gap(theta, traj, run.checkpoints[seed][-1].state)
            if gap > REPLAY_TOLERANCE:
                warnings.warn(
                    f"unrolled: the replay of seed {seed} ends {gap:.2e} (relative) away from the run's final "
                    "weights; was the run trained by this package on this training set?",
                    stacklevel=2,
                )
            self.members_.append(_Member(seed, traj, theta, gap))
            if self.progress is not None:
                self.progress(i + 1, len(seeds), f"unrolled: seed {seed} replayed")
        self.fitted_ = True
        return self

    @property
    def replay_gaps_(self) -> dict[int, float]:
        """Per seed, the replay's relative distance to the run's final weights (0.0 when bit-identical)."""
        self._check_fitted()
        return {m.seed: m.replay_gap for m in self.members_}

    @property
    def chosen_seeds_(self) -> tuple[int, ...]:
        """The run seeds replayed by `fit`, in order."""
        self._check_fitted()
        return tuple(m.seed for m in self.members_)

    def _chunk(self, traj: Trajectory) -> int:
        if self.settings.query_chunk is not None:
            return self.settings.query_chunk
        item = torch.finfo(traj.dtype).bits // 8
        return int(max(1, min(32, self.settings.memory_bytes // (6 * traj.flat.numel * item))))

    # ----------------------------------------------------------------------------------- scoring
    def weight_gradients(
        self,
        member: _Member,
        queries: ExampleSet,
        targets: torch.Tensor | None = None,
        objective: str = "loss",
    ) -> torch.Tensor:
        """`dm(q)/dw_i` float64 `[n_query, N]` for one seed; m = `objective` of class `targets` (default labels).

        The predicted change of m when i is removed is `-dm/dw_i`.
        """
        traj = member.trajectory
        targets = queries.labels if targets is None else targets
        model = traj.models[-1]
        x = prepare_inputs(model, queries.inputs)
        x = x.to(traj.dtype) if x.is_floating_point() else x
        chunk = self._chunk(traj)
        out = torch.empty(len(queries), self.n_train_, dtype=torch.float64)
        for a in range(0, len(queries), chunk):
            b = min(a + chunk, len(queries))
            cot = measurement_gradients(model, traj.flat, member.theta, x[a:b], targets[a:b], objective)
            out[a:b] = reverse_pass(traj, cot, self._step_progress(member.seed, a, b, len(queries)))
        return out

    def _step_progress(self, seed: int, a: int, b: int, n: int):
        """Progress over the query rows `[a, b)` of `n`, advanced per replayed segment (None without one)."""
        if self.progress is None:
            return None
        report = self.progress

        def step(done: int, total: int) -> None:
            report(a + round((b - a) * done / total), n, f"unrolled: seed {seed}, queries {a}-{b - 1} of {n}")

        return step

    def score(self, queries: ExampleSet) -> torch.Tensor:
        """`[n_query, N]` float32: `-dloss(q)/dw_i` averaged over seeds (positive = i helps q)."""
        self._check_fitted()
        total = sum(-self.weight_gradients(m, queries) for m in self.members_)
        return (total / len(self.members_)).float()

    def self_influence(self) -> torch.Tensor:
        """`[N]` float32: each training example's score on itself (its own loss as the query).

        Runs the N training examples as queries, chunk by chunk, keeping only the diagonal of each
        `[chunk, N]` block: N / n_query times the cost of `score`.
        """
        self._check_fitted()
        out = torch.zeros(self.n_train_, dtype=torch.float64)
        for m in self.members_:
            data = m.trajectory.data
            chunk = self._chunk(m.trajectory)
            for a in range(0, self.n_train_, chunk):
                b = min(a + chunk, self.n_train_)
                rows = self.weight_gradients(m, data.subset(range(a, b)))
                out[a:b] -= rows[torch.arange(b - a), torch.arange(a, b)]
        return (out / len(self.members_)).float()
