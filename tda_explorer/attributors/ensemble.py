"""Efficient ensembles (Deng et al., 2024): a gradient attributor averaged over ensemble members.

`score[q, t] = mean_m score_base(q, t; member m)` (`combine="mean"`, the default for TRAK: the naive
ensemble of independently fitted members), or the base attributor's own multi-model average over the members
(`combine="native"`): identical for Grad-Dot, Grad-Cos, TracIn and influence functions, which average
per-model scores; for TRAK it is TRAK's ensemble `(mean_m K_m(q))[t] * (mean_m Q_m)[t]` (the paper's
formulation of TRAK over I models), i.e. exactly `trak` over the same seeds, which is why it is not the
default. With a single member both equal the base.

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
from tda_explorer.attributors.ensemble_members import (
    MEMBER_KINDS,
    LoraSettings,
    MemberRun,
    dropout_members,
    independent_members,
    lora_member_run,
    lora_members,
    state_bytes,
)
from tda_explorer.backend.features import true_class_probability
from tda_explorer.data.example_set import ExampleSet
from tda_explorer.errors import ConfigError
from tda_explorer.models import prepare_inputs
from tda_explorer.store import Workspace
from tda_explorer.training.runs import TrainedRun

COMBINE = ("native", "mean")


def member_setting(base: str) -> tuple[str, Any]:
    """The base attributor's setting that selects models, and the value that selects all of them."""
    if base not in ATTRIBUTORS or base == Ensemble.name:
        raise ConfigError(
            f"ensemble base {base!r} is not a registered attributor; choose one of "
            f"{sorted(n for n in ATTRIBUTORS if n != Ensemble.name)} (e.g. trak, grad_dot, influence)."
        )
    params = inspect.signature(ATTRIBUTORS[base].__init__).parameters
    if "seeds" in params:
        return "seeds", "all"
    if "n_models" in params:
        return "n_models", None
    raise ConfigError(f"attributor {base!r} has no `seeds` / `n_models` setting, so it cannot be ensembled.")


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
    """An efficient ensemble around a gradient attributor (see module docstring).

    Args:
        base: registry name of the wrapped attributor ("trak", "grad_dot", "grad_cos", "influence", ...).
        base_settings: its settings (not its model selection, which the ensemble sets).
        kind: "independent" | "dropout" | "lora".
        n_models: independent / dropout: trained run seeds used (the first n; None = all).
        n_masks: dropout: masks per trained model (J).
        mask_seed: dropout: seed of the masks (member j of run seed s uses `member_mask_seed(mask_seed, s, j)`).
        dropout_p: dropout: mask probability; None = each dropout layer's own `p`.
        q_only: dropout + TRAK: kernels from the plain models, dropout members only for Q.
        combine: "mean" (one base fit per member, scores averaged) or "native" (the base's own
            multi-model average; for TRAK the same scores as `trak` over the members); None (default) =
            "mean" for TRAK (without `q_only`), "native" for the other bases (the same scores in one fit).
        n_adapters: lora: number of LoRA members.
        rank / lora_alpha / lora_epochs / lora_lr / base_seed / lora_targets / reinit_head: lora: see
            `LoraSettings`.
        lora_seed: lora: member i is fine-tuned with seed `lora_seed + i`.
        workspace: where LoRA fine-tunes are cached (default `Workspace()`); not part of the settings.
    """

    name = "ensemble"

    def __init__(
        self,
        base: str = "trak",
        base_settings: dict | None = None,
        kind: str = "independent",
        n_models: int | None = None,
        n_masks: int = 4,
        mask_seed: int = 0,
        dropout_p: float | None = None,
        q_only: bool = False,
        combine: str | None = None,
        n_adapters: int = 4,
        rank: int = 4,
        lora_alpha: float | None = None,
        lora_epochs: int = 2,
        lora_lr: float | None = None,
        lora_seed: int = 0,
        base_seed: int | None = None,
        lora_targets: Sequence[str] | None = None,
        reinit_head: bool = True,
        progress=None,
        workspace: Workspace | None = None,
    ) -> None:
        base_settings = dict(base_settings or {})
        key, _ = member_setting(base)
        if key in base_settings:
            raise ConfigError(f"leave {key!r} out of base_settings: the ensemble chooses the models.")
        if kind not in MEMBER_KINDS:
            raise ConfigError(f"ensemble kind {kind!r} is not one of {MEMBER_KINDS}.")
        if combine is None:  # the naive ensemble's mean, in one native fit where that is the same scores
            combine = "mean" if base == "trak" and not q_only else "native"
        if combine not in COMBINE:
            raise ConfigError(f"combine {combine!r} is not one of {COMBINE}.")
        if n_models is not None and (
            isinstance(n_models, bool) or not isinstance(n_models, int) or n_models < 1
        ):
            raise ConfigError(f"n_models must be an integer >= 1 or None, got {n_models!r}.")
        for what, v in (("n_masks", n_masks), ("n_adapters", n_adapters)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{what} must be an integer >= 1, got {v!r}.")
        if dropout_p is not None and not 0.0 <= dropout_p < 1.0:
            raise ConfigError(f"dropout_p must be in [0, 1) or None, got {dropout_p!r}.")
        if q_only and (kind != "dropout" or base != "trak" or combine != "native"):
            raise ConfigError(
                "q_only (the TRAK trick) needs kind='dropout', base='trak' and combine='native'."
            )
        settings: dict[str, Any] = {
            "base": base,
            "base_settings": base_settings,
            "kind": kind,
            "combine": combine,
        }
        if kind == "independent":
            settings.update(n_models=n_models)
        elif kind == "dropout":
            settings.update(n_models=n_models, n_masks=n_masks, mask_seed=mask_seed, dropout_p=dropout_p)
            settings.update(q_only=bool(q_only))
        else:
            LoraSettings(rank, lora_alpha, lora_targets, lora_epochs, lora_lr, base_seed)  # validate
            settings.update(
                n_adapters=n_adapters,
                rank=rank,
                lora_alpha=lora_alpha,
                lora_epochs=lora_epochs,
                lora_lr=lora_lr,
                lora_seed=lora_seed,
                base_seed=base_seed,
                lora_targets=None if lora_targets is None else list(lora_targets),
                reinit_head=bool(reinit_head),
            )
        super().__init__(progress=progress, **settings)
        self.workspace = workspace
        self.rank_only = ATTRIBUTORS[base].rank_only

    # ----------------------------------------------------------------------------------- members
    def _lora(self) -> LoraSettings:
        s = self.settings
        return LoraSettings(
            s["rank"],
            s["lora_alpha"],
            s["lora_targets"],
            s["lora_epochs"],
            s["lora_lr"],
            s["base_seed"],
            s["reinit_head"],
        )

    def _members(self, run: TrainedRun, train: ExampleSet) -> tuple[MemberRun, dict]:
        """The member run and the training cost `{seconds, models, adapters, detail}` of what it needs."""
        s = self.settings
        if s["kind"] == "dropout" and getattr(run.model_config, "arch", "") in ("text", "hf"):
            raise ConfigError(
                "dropout ensembles support image / tabular models (mlp, cnn); text models have no dropout "
                "masks of a fixed shape (their activations follow each text's length): use kind='lora' or "
                "kind='independent'."
            )

        def seed_seconds(seeds: Sequence[int]) -> float:
            return float(sum(run.metrics.get(x, {}).get("seconds", math.nan) for x in seeds))

        if s["kind"] in ("independent", "dropout"):
            seeds = run.select_seeds("all" if s["n_models"] is None else s["n_models"])
            if s["kind"] == "independent":
                members = independent_members(run, seeds)
            else:
                members = dropout_members(run, seeds, s["n_masks"], s["mask_seed"], s["dropout_p"])
            cost = {"seconds": seed_seconds(seeds), "models": len(seeds), "adapters": 0, "seeds": list(seeds)}
            return members, cost
        lora = self._lora()
        base_seed = run.seeds[0] if lora.base_seed is None else lora.base_seed
        run.select_seeds([base_seed])  # a clear error for an unknown base seed
        ws = self.workspace if self.workspace is not None else Workspace()
        seeds = [s["lora_seed"] + i for i in range(s["n_adapters"])]
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
        key, everything = member_setting(self.settings["base"])
        return make_attributor(
            self.settings["base"], progress=progress, **self.settings["base_settings"], **{key: everything}
        )

    # ----------------------------------------------------------------------------------- fitting
    def fit(self, run: TrainedRun, train: ExampleSet) -> Ensemble:
        """Build the members (training LoRA fine-tunes if needed) and fit the base over them; returns self."""
        s = self.settings
        start = time.perf_counter()
        members, train_cost = self._members(run, train)
        lora_seconds = sum(train_cost.get("finetune_seconds", [])) if s["kind"] == "lora" else 0.0
        fit_start = time.perf_counter()
        if s.get("q_only", False):
            self.bases_ = [self._fit_q_only(run, train, members, train_cost["seeds"])]
        elif s["combine"] == "native":
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
        base = self.settings["base_settings"]
        all_ckpts = self.settings["base"] == "tracin" or base.get("checkpoints") == "all"
        kept = (lambda ck: ck) if all_ckpts else (lambda ck: ck[-1:])
        storage = sum(
            state_bytes(c.state) for seed in train_cost["seeds"] for c in kept(run.checkpoints[seed])
        )
        if self.settings["kind"] == "lora":
            storage += sum(state_bytes(m.state) for m in self.adapters_)
        return {
            "kind": self.settings["kind"],
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
