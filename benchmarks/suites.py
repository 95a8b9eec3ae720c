"""Benchmark suites: what is trained, how the ground truth is made, and which methods are compared.

A `Suite` fixes a dataset (optionally cut to its first `n_train` / `n_query` examples), a model, a training
config, the seeds of the run (TRAK-k reads k independently trained models, every other method reads the
first seed's final model and TracIn the first seed's checkpoints with their learning rates), the LDS
ground truth (`LDSConfig`: M subsets of size alpha*N, R retraining seeds), the label noise of the
mislabel experiment, and a list of `Method`s. A `Method` pairs one of our attributors (registry name +
settings) with its dattri 0.3.0 counterpart (a `benchmarks.peers.dattri_runner` method + keyword
arguments), or with none.

Suites are JSON-able (`Suite.to_dict` / `Suite.from_dict`), so a worker process can rebuild one and the
results file records exactly what was run. Named suites live in `SUITES`; `GROUPS` maps the `--suite`
choices of `benchmarks.run` ("quick", "full") to suite names.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tda_explorer.data import DatasetSpec, DatasetSplits, inject_label_noise, load_dataset
from tda_explorer.evaluation import LDSConfig
from tda_explorer.models import LogRegConfig, MLPConfig, ModelConfig, model_config_from_dict
from tda_explorer.training import TrainConfig, default_train_config

#: Damping handed to dattri's influence functions: "ours" = the total shift our attributor used
#: (weight decay + its damping), so both solve the same damped system; a number = that absolute value.
PEER_DAMPING_OURS = "ours"

#: What dattri reads as checkpoints: the first seed's final model ("final"), the first seed's trajectory
#: checkpoints weighted by their learning rates ("trajectory", TracIn), or the final models of the first
#: `Method.models` seeds ("models", TRAK).
PEER_CHECKPOINTS = ("final", "trajectory", "models")


@dataclass(frozen=True)
class Method:
    """One row of a benchmark table: our attributor and its dattri counterpart.

    Attributes:
        label: row name, unique in a suite (e.g. "influence/ekfac", "trak-10").
        name: our attributor's registry name (`make_attributor(name, **settings)`).
        settings: our attributor's settings.
        models: number of run seeds the method reads (TRAK-10: 10); sets the run's and the noisy run's
            seed count, the models dattri reads (checkpoints "models") and the loss baseline's seeds.
        peer: the dattri method (`benchmarks.peers.dattri_runner.METHODS`), or None for no counterpart.
        peer_kwargs: keyword arguments of `run_dattri` (e.g. `proj_dim`, `method_kwargs`); "damping" may be
            `PEER_DAMPING_OURS`.
        peer_checkpoints: one of `PEER_CHECKPOINTS`.
        peer_budget_s: when set with `peer_probe`, dattri is first probed on a reduced problem and skipped
            (recorded with the estimate) if the extrapolated full run would take longer than this.
        peer_probe: `{"kind": "kwarg", "name": "recursion_depth", "values": [a, b], "full": n}` (rerun with
            the keyword at a and b, extrapolate linearly to n) or `{"kind": "queries", "values": [a, b]}`
            (score the first a and b queries, extrapolate to all).
        mislabel: run the mislabel experiment (self-influence on the noisy run) for our method.
    """

    label: str
    name: str
    settings: dict = field(default_factory=dict)
    models: int = 1
    peer: str | None = None
    peer_kwargs: dict = field(default_factory=dict)
    peer_checkpoints: str = "final"
    peer_budget_s: float | None = None
    peer_probe: dict | None = None
    mislabel: bool = True

    def __post_init__(self) -> None:
        for name in ("settings", "peer_kwargs", "peer_probe"):
            object.__setattr__(self, name, _canonical(getattr(self, name)))
        if self.peer_checkpoints not in PEER_CHECKPOINTS:
            raise ValueError(
                f"peer_checkpoints must be one of {PEER_CHECKPOINTS}, got {self.peer_checkpoints!r}."
            )
        if self.models < 1:
            raise ValueError(f"models must be >= 1, got {self.models}.")
        if self.peer_probe is not None and self.peer_probe.get("kind") not in ("kwarg", "queries"):
            raise ValueError(f"peer_probe kind must be 'kwarg' or 'queries', got {self.peer_probe!r}.")

    def to_dict(self) -> dict:
        """JSON-able form (inverse: `Method(**d)`)."""
        return copy.deepcopy(asdict(self))

    def key(self) -> str:
        """Hash of the row's definition; a cached row is reused only while this is unchanged."""
        return _hash(self.to_dict())


#: dattri's counterpart of each of our influence solvers.
PEER_INFLUENCE = {"ekfac": "if_ekfac", "cg": "if_cg", "lissa": "if_lissa", "exact": "if_explicit"}


def influence_row(solver: str, settings: dict | None = None, **fields: Any) -> Method:
    """The row `influence/<solver>` (settings `{"solver": solver, **settings}`) against dattri's same solver,
    which is handed the damping our attributor used (`PEER_DAMPING_OURS`); `fields` are further `Method` fields.
    """
    return Method(
        f"influence/{solver}",
        "influence",
        {"solver": solver, **(settings or {})},
        peer=PEER_INFLUENCE[solver],
        peer_kwargs={"damping": PEER_DAMPING_OURS},
        **fields,
    )


@dataclass(frozen=True)
class Suite:
    """A benchmark: data, model, training, ground truth, label noise and methods (see module docstring).

    Attributes:
        name: suite name; results go to `benchmarks/results/<name>.json`.
        dataset: the dataset spec (`DatasetSpec.to_dict()` form).
        model: the model config (`ModelConfig.to_dict()` form).
        train: the training config (`TrainConfig.to_dict()` form).
        lds: the LDS config (`LDSConfig` fields, without `shard_size`).
        methods: the rows, in table order.
        n_train: keep only the first n training examples (None = all).
        n_query: keep only the first n test examples as queries (None = all).
        noise_fraction: fraction of training labels flipped for the mislabel experiment.
        noise_seed: seed of the flips.
        targets: `{row label: minimum LDS}` goals, checked in the report (not enforced).
        description: one line for the report.
        isolate: run each measured step in a fresh worker process (clean RSS baseline, hard timeout);
            False runs them in-process (faster start, RSS baseline after a `malloc_trim`).
    """

    name: str
    dataset: dict
    model: dict
    train: dict
    lds: dict
    methods: tuple[Method, ...]
    n_train: int | None = None
    n_query: int | None = None
    noise_fraction: float = 0.1
    noise_seed: int = 0
    targets: dict = field(default_factory=dict)
    description: str = ""
    isolate: bool = True

    def __post_init__(self) -> None:
        labels = [m.label for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ValueError(f"suite {self.name!r}: method labels must be unique, got {labels}.")
        object.__setattr__(self, "methods", tuple(self.methods))
        for name in ("dataset", "model", "train", "lds", "targets"):
            object.__setattr__(self, name, _canonical(getattr(self, name)))

    # ------------------------------------------------------------------------------ configs
    @property
    def model_config(self) -> ModelConfig:
        return model_config_from_dict(self.model)

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.train)

    @property
    def lds_config(self) -> LDSConfig:
        return LDSConfig(**{**self.lds, "seeds": tuple(self.lds.get("seeds", (0,)))})

    @property
    def seeds(self) -> tuple[int, ...]:
        """Seeds of the run: 0 .. max(models) - 1."""
        return tuple(range(max(m.models for m in self.methods)))

    @property
    def noisy_seeds(self) -> tuple[int, ...]:
        """Seeds of the noisy run: as many as the widest method with a mislabel experiment reads."""
        widths = [m.models for m in self.methods if m.mislabel]
        return tuple(range(max(widths))) if widths else ()

    def method(self, label: str) -> Method:
        for m in self.methods:
            if m.label == label:
                return m
        raise KeyError(
            f"suite {self.name!r} has no method {label!r}; it has {[m.label for m in self.methods]}."
        )

    # ------------------------------------------------------------------------------ data
    def splits(self) -> DatasetSplits:
        """The (possibly cut) clean splits; the cut is recorded in `spec["bench_cut"]`."""
        splits = load_dataset(DatasetSpec.from_dict(self.dataset))
        if self.n_train is None and self.n_query is None:
            return splits
        train = splits.train if self.n_train is None else splits.train.subset(range(self.n_train))
        test = splits.test if self.n_query is None else splits.test.subset(range(self.n_query))
        spec = {**splits.spec, "bench_cut": {"n_train": self.n_train, "n_query": self.n_query}}
        return DatasetSplits(train, splits.val, test, spec)

    def noisy_splits(self) -> DatasetSplits:
        """The clean splits with `noise_fraction` of the training labels flipped (seeded, recorded)."""
        return inject_label_noise(self.splits(), self.noise_fraction, self.noise_seed)

    # ------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """JSON-able form (inverse: `Suite.from_dict`)."""
        d = {k: copy.deepcopy(v) for k, v in asdict(self).items() if k != "methods"}
        d["methods"] = [m.to_dict() for m in self.methods]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Suite:
        d = copy.deepcopy(d)
        d["methods"] = tuple(Method(**m) for m in d["methods"])
        return cls(**d)

    def truth_key(self) -> str:
        """Hash of everything the run, the ground truth and the noisy run depend on (not the methods)."""
        d = self.to_dict()
        for k in ("methods", "targets", "description", "name", "isolate"):
            d.pop(k)
        d["seeds"], d["noisy_seeds"] = list(self.seeds), list(self.noisy_seeds)
        return _hash(d)


def _canonical(d: Any) -> Any:
    """The JSON round trip of `d` (tuples become lists), so a suite equals its `from_dict(to_dict())`."""
    return None if d is None else json.loads(json.dumps(d))


def _hash(d: Any) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _lds(n_subsets: int, alpha: float = 0.5, seeds: tuple[int, ...] = (0,)) -> dict:
    return {"n_subsets": n_subsets, "alpha": alpha, "seeds": list(seeds), "subset_seed": 0}


# ------------------------------------------------------------------------------------ methods
#: Settings chosen by a small grid search on each suite's own LDS ground truth (so these rows are
#: optimistic by the selection; the rows marked "defaults" show the attributors' out-of-the-box values):
#: influence damping (absolute, added to the weight decay) from {1e-4 .. 0.1} for the exact solver;
#: (TRAK's lambda is not tuned here: its default, 1 x the mean eigenvalue of Phi^T Phi, was chosen on
#: digits and MNIST logistic regression and is given to dattri too.)
TUNED: dict[str, dict[str, Any]] = {
    "logreg": {"damping": 4e-3},
    "mlp": {"damping": None},
}

#: Feature width of the Kronecker-projected TRAK row: its features cost one backward pass, so it can be
#: much wider than the dense rows' k (the kernel is then solved in the N-space).
KRONECKER_DIM = 24_576

#: dattri's TRAK divides gradients by sqrt(n_params) and its projection preserves norms, so its kernel is
#: ours / n_params: this peer keyword asks for the mean lambda our row used / n_params (the same estimator).
PEER_TRAK_REG_OURS = "ours"


def _methods(kind: str, *, exact: bool, proj_dim: int, trak_models: int) -> tuple[Method, ...]:
    """The full method list (every classic registered attributor) with its dattri counterparts.

    Our settings are the attributors' defaults, except (1) Grad-Dot/Cos over all parameters, like dattri's
    full-parameter TracInAttributor; (2) CG / LiSSA iteration limits (cost); (3) the `TUNED` damping and
    TRAK regularization, with a "defaults" row beside each tuned one; (4) the main TRAK row projects with a
    count sketch (`proj_type="sjlt"`, same k; the dense Rademacher projection is its own row). dattri gets the same damping (the
    total shift ours used), checkpoints, projection size and TRAK regularization, and otherwise its
    shipped defaults (CG: 10 iterations; LiSSA: depth 5000, scaling 50, batch 1).
    """
    tuned = TUNED[kind]
    budget = 20 * 60.0
    damping = {} if tuned["damping"] is None else {"damping": tuned["damping"]}
    if kind == "logreg":
        cg, lissa = {"max_iter": 100, "tol": 1e-4}, {"max_iter": 100, "tol": 1e-4}
        cg_probe = {"kind": "queries", "values": [16, 32]}
    else:  # every iteration is a Hessian-vector product with all queries over all 4,000 examples
        cg, lissa = {"max_iter": 10, "tol": 1e-3}, {"max_iter": 10, "tol": 1e-3}
        cg_probe = {"kind": "queries", "values": [4, 8]}
    # self-influence = one iterative solve per training example (4,000 right-hand sides): not run (on
    # logistic regression CG's took over 20 minutes); the exact and EK-FAC rows give influence's AUC
    iterative_mislabel = False
    rows = [
        Method("grad_dot", "grad_dot", {"params": "all"}, peer="grad_dot"),
        Method("grad_cos", "grad_cos", {"params": "all"}, peer="grad_cos"),
        Method("tracin", "tracin", {}, peer="tracin", peer_checkpoints="trajectory"),
        influence_row("ekfac"),
        Method(  # influence averaged over the run's seeds, like TRAK's models (no dattri counterpart)
            f"influence/ekfac ({trak_models} seeds)",
            "influence",
            {"solver": "ekfac", "seeds": "all"},
            models=trak_models,
        ),
        Method("influence/kfac", "influence", {"solver": "kfac"}),
        influence_row(
            "cg",
            {**damping, **cg},
            peer_budget_s=budget,
            peer_probe=cg_probe,
            mislabel=iterative_mislabel,
        ),
        influence_row(
            "lissa",
            {**damping, **lissa},
            peer_budget_s=budget,
            peer_probe={"kind": "kwarg", "name": "recursion_depth", "values": [10, 30], "full": 5000},
            mislabel=iterative_mislabel,
        ),
    ]
    if kind == "logreg":  # the same CG preconditioned by EK-FAC (on the MLP every HVP costs minutes)
        rows.append(
            Method(
                "influence/cg (ekfac-preconditioned)",
                "influence",
                {"solver": "cg", **damping, **cg, "preconditioner": "ekfac"},
                mislabel=iterative_mislabel,
            )
        )
    if exact:
        rows += [
            influence_row("exact", damping),
            Method("influence/exact (defaults)", "influence", {"solver": "exact"}),
        ]
    # rows without their own proj_type keep the dense Rademacher projection they were measured with
    # (TRAK's default became the count sketch "sjlt" afterwards)
    trak = {"proj_dim": proj_dim, "n_models": trak_models, "proj_type": "rademacher"}
    rows += [
        Method(  # count-sketch projection of the same size (lambda relative to the kernel); dattri given
            f"trak-{trak_models}",  # the same lambda and its dense Rademacher projection
            "trak",
            {**trak, "proj_type": "sjlt"},
            models=trak_models,
            peer="trak",
            peer_kwargs={"proj_dim": proj_dim, "trak_regularization": PEER_TRAK_REG_OURS},
            peer_checkpoints="models",
        ),
        Method(  # the same with a dense Rademacher projection, like dattri's (compare with the row above's peer)
            f"trak-{trak_models} (rademacher)",
            "trak",
            trak,
            models=trak_models,
        ),
        Method(  # plain TRAK (lambda = 0, pseudo-inverse) against dattri's shipped default
            f"trak-{trak_models} (reg 0)",
            "trak",
            {**trak, "proj_type": "sjlt", "damping": 0.0},
            models=trak_models,
            peer="trak",
            peer_kwargs={"proj_dim": proj_dim},
            peer_checkpoints="models",
        ),
        Method(  # per-layer Kronecker projection (no dattri counterpart; compare with the trak row's peer)
            f"trak-{trak_models} (kronecker)",
            "trak",
            {**trak, "proj_dim": KRONECKER_DIM, "proj_layout": "kronecker"},
            models=trak_models,
        ),
        Method("repsim", "repsim", {}),
    ]
    if kind == "mlp":  # EK-FAC influence averaged over the first seed's saved checkpoints (like TRAK's)
        rows.insert(
            5,
            Method("influence/ekfac (checkpoints)", "influence", {"solver": "ekfac", "checkpoints": "all"}),
        )
    if kind == "mlp":  # the same over each model's saved training checkpoints (TRAK's multi-checkpoint use)
        rows.insert(
            -1,
            Method(
                f"trak-{trak_models} (kronecker + checkpoints)",
                "trak",
                {**trak, "proj_dim": KRONECKER_DIM, "proj_layout": "kronecker", "checkpoints": "all"},
                models=trak_models,
            ),
        )
    return tuple(rows)


def _quick() -> Suite:
    return Suite(
        name="quick-digits-logreg",
        description="sklearn digits (1,297 train / 250 queries), logistic regression, M=20 half subsets, R=1",
        dataset=DatasetSpec("digits").to_dict(),
        model=LogRegConfig().to_dict(),
        train=default_train_config("logreg").to_dict(),
        lds=_lds(20),
        isolate=False,
        methods=(
            Method("grad_dot", "grad_dot", {"params": "all"}, peer="grad_dot"),
            influence_row("ekfac"),
            influence_row("exact"),
            Method(
                "trak-5",
                "trak",
                {"proj_dim": 128, "n_models": 5, "proj_type": "sjlt"},
                models=5,
                peer="trak",
                peer_kwargs={"proj_dim": 128, "trak_regularization": PEER_TRAK_REG_OURS},
                peer_checkpoints="models",
            ),
        ),
    )


def _mnist(model: str) -> Suite:
    if model == "logreg":
        model_cfg, targets = (
            LogRegConfig(),
            {"influence/exact": 0.90, "influence/ekfac": 0.85, "trak-10": 0.75},
        )
        arch = "logistic regression"
    else:
        model_cfg, targets = MLPConfig(), {"trak-10": 0.63, "influence/ekfac": 0.50}
        arch = f"MLP {list(MLPConfig().hidden)} (ReLU)"
    return Suite(
        name=f"mnist5k-{model}",
        description=f"MNIST 5k (4,000 train / 500 test queries), {arch}, M=100 half subsets, R=1",
        dataset=DatasetSpec("mnist5k").to_dict(),
        model=model_cfg.to_dict(),
        train=default_train_config(model).to_dict(),
        lds=_lds(100),
        methods=_methods(model, exact=model == "logreg", proj_dim=2048, trak_models=10),
        targets=targets,
    )


SUITES: dict[str, Suite] = {s.name: s for s in (_quick(), _mnist("logreg"), _mnist("mlp"))}

#: `--suite` choices: a group name or a single suite name.
GROUPS: dict[str, tuple[str, ...]] = {
    "quick": ("quick-digits-logreg",),
    "full": ("mnist5k-logreg", "mnist5k-mlp"),
    **{name: (name,) for name in SUITES},
}
