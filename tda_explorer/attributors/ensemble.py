"""Efficient ensembles (Deng et al., 2024): a gradient attributor averaged over ensemble members.

`score[q, t] = mean_m score_base(q, t; member m)` (`combine="mean"`, the default: the naive
ensemble of independently fitted members), or the base attributor's own multi-model average over the members
(`combine="native"`): identical for Grad-Dot, Grad-Cos, TracIn and influence functions, which average
per-model scores; for TRAK it is TRAK's ensemble `(mean_m K_m(q))[t] * (mean_m Q_m)[t]` (the paper's
formulation of TRAK over I models), i.e. exactly `trak` over the same seeds, which is why it is not the
default. With a single member both equal the base; for the other bases "mean" is computed by one native fit
(the same scores, one pass).

Members (`kind`, see `ensemble_members`):
- "independent": I = `n_models` seeds of the run (the naive ensemble); training cost I full models.
- "dropout": I' = `n_models` seeds x J = `n_masks` fixed dropout masks each (I' x J members). A mask is
  fixed per member (seeded, seed recorded in `members_`) and the same for train and query gradients.
  `q_only=True` (TRAK only) is the paper's TRAK trick: projected gradients and kernels from the plain
  I' models, the dropout members only enter through `Q = 1 - p_y(train)` averaged over them.
- "lora": `n_adapters` LoRA fine-tunes of one base model (the run seed `base_seed`); gradients over
  LoRA + head parameters only (the base weights are frozen). The fine-tunes are trained inside `fit`
  (with progress) and cached in the workspace (artifact kind "lora_members").

Sign and scale: those of the base attributor (positive = the training example helps the query);
averaging preserves both. Self-influence is the members' average of the base's direct self-influence.

Cost (`cost_` after fit, updated by `score`): training seconds of what the ensemble needs (the run's
recorded seconds of the seeds used; for LoRA 1 base + the fine-tunes), serving seconds (fit + score,
LoRA fine-tuning excluded), storage (bytes of the model states to keep; dropout masks are regenerated
from their seeds) and the bytes of the fitted train-side features.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tda_explorer.attributors.base import ATTRIBUTORS, Attributor, make_attributor, register
from tda_explorer.attributors.ensemble_lora import lora_members
from tda_explorer.attributors.ensemble_members import (
    MemberRun,
    dropout_members,
    independent_members,
    lora_member_run,
    state_bytes,
)
from tda_explorer.attributors.method_settings import COMBINE, EnsembleSettings, member_setting  # noqa: F401
from tda_explorer.backend.features import true_class_probability
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import prepare_inputs
from tda_explorer.store import Workspace, require_workspace
from tda_explorer.training.runs import TrainedRun


def _tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the tensors reachable from `obj` (tensors, lists, tuples, dicts, plain objects; no modules)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, nn.Module):
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if inspect.ismethod(obj):  # e.g. a curvature object's bound inverse
        return _tensor_bytes(obj.__self__, seen)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not callable(obj):
        return sum(_tensor_bytes(v, seen) for v in vars(obj).values())
    return 0


def _fitted_bytes(attributor: Attributor) -> int:
    """Bytes of the tensors in an attributor's fitted attributes (names ending in `_`)."""
    seen: set[int] = set()
    return sum(_tensor_bytes(v, seen) for k, v in vars(attributor).items() if k.endswith("_"))


@register
class Ensemble(Attributor):
    """An efficient ensemble around a gradient attributor (see module docstring); settings:
    `EnsembleSettings`. `workspace` (not a setting): where LoRA fine-tunes are cached (required
    for `kind="lora"`; `compute_scores` passes its own)."""

    name = "ensemble"
    Settings = EnsembleSettings
    settings: EnsembleSettings

    def __init__(
        self,
        settings: EnsembleSettings | None = None,
        /,
        progress=None,
        workspace: Workspace | None = None,
        **values,
    ) -> None:
        super().__init__(settings, progress=progress, **values)
        self.workspace = workspace
        self.rank_only = ATTRIBUTORS[self.settings.base].rank_only

    # ----------------------------------------------------------------------------------- members
    def _members(self, run: TrainedRun, train: ExampleSet) -> tuple[MemberRun, dict]:
        """The member run and the training cost `{seconds, models, adapters, detail}` of what it needs."""
        s = self.settings
        if s.kind == "dropout" and getattr(run.model_config, "arch", "") in ("text", "hf"):
            raise ConfigError(
                "dropout ensembles support image / tabular models (mlp, cnn); text models have no dropout "
                "masks of a fixed shape (their activations follow each text's length): use kind='lora' or "
                "kind='independent'."
            )

        def seed_seconds(seeds: Sequence[int]) -> float:
            return float(sum(run.metrics.get(x, {}).get("seconds", math.nan) for x in seeds))

        if s.kind in ("independent", "dropout"):
            seeds = run.select_seeds("all" if s.n_models is None else s.n_models)
            if s.kind == "independent":
                members = independent_members(run, seeds)
            else:
                members = dropout_members(run, seeds, s.n_masks, s.mask_seed, s.dropout_p)
            cost = {"seconds": seed_seconds(seeds), "models": len(seeds), "adapters": 0, "seeds": list(seeds)}
            return members, cost
        lora = self.settings.lora()
        base_seed = run.seeds[0] if lora.base_seed is None else lora.base_seed
        run.select_seeds([base_seed])  # a clear error for an unknown base seed
        ws = require_workspace(self.workspace, "a LoRA ensemble")
        seeds = [s.lora_seed + i for i in range(s.n_adapters)]
        trained = lora_members(run, train, lora, seeds, ws, self.progress)
        self.adapters_ = trained
        ft = [m.seconds for m in trained]
        cost = {
            "seconds": seed_seconds([base_seed]) + sum(ft),
            "models": 1,
            "adapters": len(trained),
            "seeds": [base_seed],
            "base_seconds": seed_seconds([base_seed]),
            "finetune_seconds": ft,
        }
        return lora_member_run(run, lora, trained), cost

    def _base(self, progress=None) -> Attributor:
        key, everything = member_setting(self.settings.base)
        return make_attributor(
            self.settings.base, progress=progress, **self.settings.base_settings, **{key: everything}
        )

    # ----------------------------------------------------------------------------------- fitting
    def fit(self, run: TrainedRun, train: ExampleSet) -> Ensemble:
        """Build the members (training LoRA fine-tunes if needed) and fit the base over them; returns self."""
        s = self.settings
        start = time.perf_counter()
        members, train_cost = self._members(run, train)
        lora_seconds = sum(train_cost.get("finetune_seconds", [])) if s.kind == "lora" else 0.0
        fit_start = time.perf_counter()
        if s.kind == "dropout" and s.q_only:
            self.bases_ = [self._fit_q_only(run, train, members, train_cost["seeds"])]
        elif s.combine == "native" or s.base != "trak":  # the same scores as the mean, in one fit
            self.bases_ = [self._base(self.progress).fit(members, train)]
        else:
            self.bases_ = []
            for i in members.seeds:
                self.bases_.append(self._base().fit(members.view([i]), train))
                if self.progress is not None:
                    self.progress(
                        i + 1, len(members.seeds), f"ensemble: member {i + 1}/{len(members.seeds)} fitted"
                    )
        fit_seconds = time.perf_counter() - fit_start
        self.members_ = [sp.to_dict() for sp in members.specs]
        self.n_train_ = len(train)
        self.cost_ = self._cost(run, members, train_cost, fit_seconds)
        self.cost_["fit_total_seconds"] = time.perf_counter() - start
        self.cost_["lora_training_in_fit_seconds"] = lora_seconds
        self.fitted_ = True
        return self

    def _fit_q_only(self, run: TrainedRun, train: ExampleSet, members: MemberRun, seeds: list[int]):
        """TRAK on the plain models of `seeds`; its `q_` replaced by the mean `1 - p_y(train)` over members."""
        base = self._base(self.progress).fit(independent_members(run, seeds), train)
        q = []
        for i in members.seeds:
            model = members.model(i)
            q.append(1 - true_class_probability(model, prepare_inputs(model, train.inputs), train.labels))
        base.q_ = torch.stack(q).mean(0).to(base.q_)
        return base

    def _cost(self, run: TrainedRun, members: MemberRun, train_cost: dict, fit_seconds: float) -> dict:
        base = self.settings.base_settings
        all_ckpts = self.settings.base == "tracin" or base.get("checkpoints") == "all"
        kept = (lambda ck: ck) if all_ckpts else (lambda ck: ck[-1:])
        storage = sum(
            state_bytes(c.state) for seed in train_cost["seeds"] for c in kept(run.checkpoints[seed])
        )
        if self.settings.kind == "lora":
            storage += sum(state_bytes(m.state) for m in self.adapters_)
        return {
            "kind": self.settings.kind,
            "members": len(members.seeds),
            "trained_models": train_cost["models"],
            "adapters": train_cost["adapters"],
            "train_seconds": train_cost["seconds"],
            "train_detail": {k: v for k, v in train_cost.items() if k != "seconds"},
            "fit_seconds": fit_seconds,
            "score_seconds": 0.0,
            "serve_seconds": fit_seconds,
            "storage_bytes": int(storage),
            "feature_bytes": int(sum(_fitted_bytes(b) for b in self.bases_)),
        }

    # ----------------------------------------------------------------------------------- scoring
    def _average(self, fn) -> torch.Tensor:
        start = time.perf_counter()
        out = torch.stack([fn(b) for b in self.bases_]).mean(0)
        self.cost_["score_seconds"] += time.perf_counter() - start
        self.cost_["serve_seconds"] = self.cost_["fit_seconds"] + self.cost_["score_seconds"]
        return out

    def score(self, queries: ExampleSet) -> torch.Tensor:
        """`[n_query, N]` float32: the members' average of the base scores (base sign and scale)."""
        self._check_fitted()
        return self._average(lambda b: b.score(queries))

    def self_influence(self) -> torch.Tensor:
        """`[N]` float32: the members' average of the base's direct self-influence."""
        self._check_fitted()
        return self._average(lambda b: b.self_influence())

    def score_groups(self, queries: ExampleSet, groups: torch.Tensor) -> torch.Tensor:
        """`[n_query, n_groups]`: the members' average of the base group scores (sum over group members)."""
        self._check_fitted()
        return self._average(lambda b: b.score_groups(queries, groups))

    @property
    def artifact_extra_(self) -> dict:
        """Metadata for the score artifact: the members (with their mask / LoRA seeds) and the cost."""
        self._check_fitted()
        return {"ensemble": {"members": self.members_, "cost": self.cost_report()}}

    def cost_report(self) -> dict:
        """Training / serving seconds, storage and feature bytes of this ensemble (see module docstring)."""
        self._check_fitted()
        return {**self.cost_, "storage_mb": self.cost_["storage_bytes"] / 2**20}
