"""The settings dataclass of every attribution method: names, defaults (written here once), help, checks.

The attributor classes take these (`Influence(InfluenceSettings(solver="exact"))`, or the keyword
arguments that build them: `Influence(solver="exact")`); the app's settings form (`appsettings.py`)
and the CLI's flags (`cli_commands/common.py`) are generated from the same fields. `METHOD_SETTINGS`
maps each registry name to its class. Damping is one knob everywhere: `damping` (absolute, None =
relative) and `damping_factor` (x the method's mean eigenvalue; `backend.inverse.absolute_damping`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from tda_explorer.attributors.airrep.data import AirRepDataConfig
from tda_explorer.attributors.airrep.encoder import EMBED_BATCH, EncoderConfig
from tda_explorer.attributors.airrep.pooling import POOLINGS
from tda_explorer.attributors.airrep.train import RankTrainConfig
from tda_explorer.attributors.ensemble_lora import LoraSettings
from tda_explorer.attributors.ensemble_members import MEMBER_KINDS
from tda_explorer.attributors.settings import MethodSettings, setting
from tda_explorer.attributors.trak_tuning import TUNE_QUERIES, TUNE_SUBSETS
from tda_explorer.backend.hessian import CURVATURES
from tda_explorer.backend.projection import PROJECTIONS
from tda_explorer.errors import ConfigError

NONNEG = (0, None)
POSITIVE = (1, None)
SEED_CHOICES = ("first", "all")
PARAMS_HELP = 'parameter subset: "all", "head" (the last layer) or a list of parameter-name prefixes'
SEEDS_HELP = 'run seeds used, scores averaged: "first", "all", an int n (the first n) or a list of seeds'


def _params(default: str, main: bool = True) -> Any:
    return setting(default, PARAMS_HELP, choices=("all", "head"), open=True, main=main)


def _seeds(default: str = "first", main: bool = False) -> Any:
    return setting(default, SEEDS_HELP, choices=SEED_CHOICES, open=True, main=main)


def _tune_subsets(without: str) -> Any:
    """The held-out signal's retrainings (`trak_tuning`, shared by TRAK's and influence's "auto")."""
    return setting(TUNE_SUBSETS, f"retrainings of the held-out signal of auto (0 = {without})", range=NONNEG)


def _tune_queries() -> Any:
    return setting(TUNE_QUERIES, "validation examples of the held-out signal of auto (the first ones; all when "
                   "fewer)", range=(2, None))  # fmt: skip


def _check_tune_subsets(n: int) -> None:
    if n == 1:
        raise ConfigError("tune_subsets must be 0 (no held-out signal) or >= 2 (a rank correlation).")


def _checkpoints() -> Any:
    return setting(
        "final", "final: each seed's final model; all: every saved checkpoint is a member (averaged)",
        choices=("final", "all"),
    )  # fmt: skip


# ------------------------------------------------------------------------------- feature-dot methods
@dataclass(frozen=True)
class GradSimilaritySettings(MethodSettings):
    """Grad-Dot and Grad-Cos."""

    params: str | Sequence[str] = _params("head")
    seeds: str = setting("first", "first: the first seed's final model; all: every seed's (averaged)",
                         choices=SEED_CHOICES)  # fmt: skip


@dataclass(frozen=True)
class TracInSettings(MethodSettings):
    """TracIn-CP."""

    params: str | Sequence[str] = _params("all")
    seeds: str | int | Sequence[int] = _seeds()
    lr_source: str = setting(
        "lr", "checkpoint weight: the lr of the step before it, or the segment's mean lr",
        choices=("lr", "segment_mean_lr"),
    )  # fmt: skip
    proj_dim: int | None = setting(None, "random projection size (null = exact gradients)", range=POSITIVE)
    proj_type: str = setting("rademacher", "projection entries", choices=PROJECTIONS)
    proj_seed: int = setting(0, "projection seed")


@dataclass(frozen=True)
class RepSimSettings(MethodSettings):
    """RepSim."""

    seeds: str | int | Sequence[int] = _seeds()
    batch_size: int = setting(512, "examples per forward pass", range=POSITIVE)


# ------------------------------------------------------------------------------- inverse-curvature methods
SOLVERS = ("ekfac", "kfac", "cg", "lissa", "exact")
PRECONDITIONERS = ("ekfac",)
#: Influence's relative damping when `damping_factor` is None, per solver (measurements: influence.py).
DEFAULT_DAMPING_FACTOR = {"ekfac": 0.1, "kfac": 0.1, "exact": 1.0, "cg": 1.0, "lissa": 1.0}


def _per_solver(values: dict[str, float]) -> str:
    """`{"ekfac": 0.1, "kfac": 0.1, "exact": 1.0}` -> "0.1 for ekfac / kfac, 1 for exact"."""
    groups: dict[float, list[str]] = {}
    for solver, value in values.items():
        groups.setdefault(value, []).append(solver)
    return ", ".join(f"{value:g} for {' / '.join(names)}" for value, names in groups.items())


@dataclass(frozen=True)
class InfluenceSettings(MethodSettings):
    """Influence functions (the solvers, damping and iteration rules are described in `influence.py`)."""

    solver: str = setting("ekfac", "inverse-Hessian solver", choices=SOLVERS, main=True)
    damping: float | None = setting(None, "absolute damping (null = damping_factor x mean eigenvalue)",
                                    range=NONNEG)  # fmt: skip
    damping_factor: float | str | None = setting(
        "auto",
        "damping as a multiple of the mean eigenvalue; auto: for ekfac / kfac chosen on the validation split "
        "(a few retrainings, cached), otherwise (and null) the solver's default ("
        + _per_solver(DEFAULT_DAMPING_FACTOR) + ")",
        choices=("auto",), range=NONNEG, main=True,
    )  # fmt: skip
    params: str | Sequence[str] = _params("all")
    seeds: str | int | Sequence[int] = _seeds()
    checkpoints: str = _checkpoints()
    weight_decay: float | None = setting(None, "L2 coefficient added to H (null = the run's)", range=NONNEG)
    seed: int = setting(0, "seed of the Fisher label sampling and of the eigenvalue probes")
    fisher_samples: int = setting(
        4, "sampled labels per example for the K-FAC / EK-FAC factors (more = less sampling noise)",
        range=POSITIVE,
    )  # fmt: skip
    tune_subsets: int = _tune_subsets("the solver's default factor")
    tune_queries: int = _tune_queries()
    max_iter: int | None = setting(None, "cg / lissa iteration cap (null = the solver's default cap)",
                                   range=POSITIVE)  # fmt: skip
    tol: float | None = setting(None, "cg / lissa relative tolerance (null = the solver's)", range=NONNEG)
    batch_size: int = setting(
        128, "examples per batch for factors and Hessian-vector products", range=POSITIVE
    )
    preconditioner: str | None = setting(None, "cg only: null or ekfac (EK-FAC preconditioned CG)",
                                         choices=PRECONDITIONERS)  # fmt: skip
    curvature: str = setting(
        "ggn", "cg / lissa curvature: Gauss-Newton or the true Hessian", choices=CURVATURES
    )

    def check(self) -> None:
        _check_tune_subsets(self.tune_subsets)
        if self.preconditioner is not None and self.solver != "cg":
            raise ConfigError(
                f"preconditioner is only used by solver='cg'; got preconditioner={self.preconditioner!r} "
                f"with solver={self.solver!r}."
            )


@dataclass(frozen=True)
class TRAKSettings(MethodSettings):
    """TRAK (the kernel, its damping and the projections are described in `trak.py`)."""

    ALIASES: ClassVar[dict[str, str]] = {
        "regularization": "damping",
        "regularization_factor": "damping_factor",
    }

    proj_dim: int | None = setting(2048, "random projection dimension (null = raw gradients)", range=POSITIVE,
                                   main=True)  # fmt: skip
    proj_type: str = setting(
        "sjlt", "projection entries: a count sketch (sjlt: one +-1 per gradient coordinate, fastest), or dense "
        "random +-1 (rademacher) / gaussian", choices=PROJECTIONS, main=True,
    )  # fmt: skip
    proj_seed: int = setting(0, "projection seed (model i uses proj_seed + i with proj_per_model)")
    damping: float | str | None = setting(
        "auto", "lambda added to Phi^T Phi: auto (a factor of trace / N chosen on the validation split), a "
        "number (absolute; 0 = plain TRAK), or null (damping_factor x the mean nonzero eigenvalue)",
        choices=("auto",), range=NONNEG, key="regularization",
    )  # fmt: skip
    damping_factor: float = setting(1.0, "relative lambda used when damping is null", range=NONNEG,
                                    key="regularization_factor")  # fmt: skip
    tune_subsets: int = _tune_subsets("fallback")
    tune_queries: int = _tune_queries()
    n_models: int | None = setting(None, "models (run seeds) averaged; null = all", range=POSITIVE, main=True)
    checkpoints: str = _checkpoints()
    params: str | Sequence[str] = _params("all", main=False)
    proj_per_model: bool = setting(True, "an independent projection per model (false: one shared)")
    proj_layout: str = setting(
        "dense", "one projection of the whole gradient, or a per-layer Kronecker projection (Linear/Conv "
        "models: far faster, allows a wider proj_dim)", choices=("dense", "kronecker"), main=True,
    )  # fmt: skip

    def check(self) -> None:
        _check_tune_subsets(self.tune_subsets)
        if self.proj_layout == "kronecker" and self.proj_dim is None:
            raise ConfigError("proj_layout='kronecker' needs a proj_dim (the total feature width).")
        if isinstance(self.damping, int):
            object.__setattr__(self, "damping", float(self.damping))


@dataclass(frozen=True)
class SourceSettings(MethodSettings):
    """Source (segments and their curvature are described in `source.py`)."""

    segments: int = setting(3, "training segments, each with its own curvature", range=POSITIVE, main=True)
    damping: float | None = setting(None, "absolute damping of each segment (null = relative)", range=NONNEG)
    damping_factor: float = setting(1e-3, "damping as a multiple of the mean eigenvalue", range=NONNEG,
                                    main=True)  # fmt: skip
    params: str | Sequence[str] = _params("all", main=False)
    seeds: str | int | Sequence[int] = _seeds()
    weight_decay: float | None = setting(None, "L2 coefficient added to every H_l (null = each stage's)",
                                         range=NONNEG)  # fmt: skip
    momentum: float | None = setting(None, "heavy-ball beta for eta / (1 - beta) (null = the run's SGD "
                                     "momentum, 0 for Adam)", range=(0, 1))  # fmt: skip
    seed: int = setting(0, "seed of the EK-FAC label sampling")
    fisher_samples: int = setting(1, "sampled labels per example for EK-FAC", range=POSITIVE)
    batch_size: int = setting(128, "examples per curvature-fitting batch", range=POSITIVE)
    chunk_size: int = setting(512, "training examples per chunk of responses", range=POSITIVE)
    include_start: bool = setting(True, "also average each segment over the checkpoint it starts from")

    def check(self) -> None:
        if self.momentum is not None and self.momentum >= 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}.")


# ------------------------------------------------------------------------------- other methods
@dataclass(frozen=True)
class UnrolledSettings(MethodSettings):
    """Exact unrolled differentiation."""

    seeds: str | int | Sequence[int] = setting(
        "first", "replay and differentiate the first seed's training, or every seed's (scores averaged); "
        "also an int n or a list of seeds", choices=SEED_CHOICES, open=True, main=True,
    )  # fmt: skip
    every: int | None = setting(None, "optimizer steps between stored snapshots (null = ceil(sqrt(T)))",
                                range=POSITIVE)  # fmt: skip
    query_chunk: int | None = setting(None, "cotangents per reverse pass (null = from memory_bytes, <= 32)",
                                      range=POSITIVE)  # fmt: skip
    memory_bytes: int = setting(2**30, "memory budget, spent twice: by the seeds' chain tapes together, and by a "
                                "reverse pass's cotangents", range=POSITIVE)  # fmt: skip


@dataclass(frozen=True)
class AirRepSettings(MethodSettings):
    """AirRep; `encoder`, `data`, `training` are dicts of `EncoderConfig`, `AirRepDataConfig`,
    `RankTrainConfig` fields (completed with their defaults, which are written there)."""

    #: Nested knobs the app shows: dotted name -> (help, choices, range); defaults from the configs.
    NESTED_MAIN: ClassVar[dict[str, tuple[str, tuple, tuple | None]]] = {
        "data.n_subsets": ("subset retrainings the encoder learns from (the cost)", (), (2, None)),
        "encoder.image_backbone": (
            "image encoder backbone (mlp is cheaper on a CPU; ignored for text and tables)",
            ("cnn", "mlp"),
            None,
        ),
        "training.epochs": ("maximum encoder training epochs", (), POSITIVE),
    }

    pooling: str = setting("attention", "attention (AirRep) or sum (ablation), to train and to score groups",
                           choices=POOLINGS)  # fmt: skip
    encoder: dict = setting({}, "EncoderConfig fields (dim, hidden, channels, depth, image_backbone, ...)")
    data: dict = setting({}, "AirRepDataConfig fields (n_subsets, alpha, subset_seed, seeds, ...)")
    training: dict = setting({}, "RankTrainConfig fields (lr, weight_decay, epochs, subsets_per_step, ...)")
    batch_size: int = setting(EMBED_BATCH, "examples per forward pass when embedding", range=POSITIVE)

    def check(self) -> None:
        for name, cls in (
            ("encoder", EncoderConfig),
            ("data", AirRepDataConfig),
            ("training", RankTrainConfig),
        ):
            try:
                full = asdict(cls(**getattr(self, name)))
            except TypeError as e:
                raise ConfigError(f"bad AirRep {name} settings: {e}") from e
            object.__setattr__(self, name, full)


# ------------------------------------------------------------------------------- wrappers
COMBINE = ("native", "mean")
MEASUREMENTS = ("loss", "margin", "prob")
DTDA_BASES = ("influence", "trak", "source", "unrolled")
# d-TDA's per-seed response by default: gradients over the last layer only. On the app's MNIST MLP demo with
# 5 seeds (2 cores) EK-FAC influence over the head takes ~20 s against 463 s over all parameters; pass
# base_settings={"params": "all"} for the full network.
DTDA_BASE_SETTINGS: dict[str, dict] = {"influence": {"params": "head"}, "trak": {"params": "head"}}


def member_setting(base: str) -> tuple[str, Any]:
    """The base method's setting that selects models, and the value that selects all of them."""
    if base not in METHOD_SETTINGS or base == "ensemble":
        raise ConfigError(
            f"ensemble base {base!r} is not a registered attributor; choose one of "
            f"{sorted(n for n in METHOD_SETTINGS if n != 'ensemble')} (e.g. trak, grad_dot, influence)."
        )
    names = METHOD_SETTINGS[base].names()
    if "seeds" in names:
        return "seeds", "all"
    if "n_models" in names:
        return "n_models", None
    raise ConfigError(f"attributor {base!r} has no `seeds` / `n_models` setting, so it cannot be ensembled.")


def _base_config(base: str, values: dict) -> dict:
    """A wrapped method's settings dict with renamed settings under their artifact-key names."""
    keys = METHOD_SETTINGS[base].config_names()
    return {keys.get(k, k): v for k, v in values.items()}


@dataclass(frozen=True)
class EnsembleSettings(MethodSettings):
    """Efficient ensembles: the fields of the other kinds are left out of `as_dict` and the artifact key."""

    base: str = setting("trak", "the gradient attributor averaged over the ensemble members",
                        choices=("trak", "grad_dot", "grad_cos", "tracin", "influence"), open=True, main=True)  # fmt: skip
    base_settings: dict = setting(
        {}, "the base's settings (not its model selection, which the ensemble sets)"
    )
    kind: str = setting("independent", "members: the run's seeds, fixed dropout masks of each seed, or LoRA "
                        "fine-tunes of one seed", choices=MEMBER_KINDS, main=True)  # fmt: skip
    n_models: int | None = setting(None, "independent / dropout: run seeds used (the first n; null = all)",
                                   range=POSITIVE)  # fmt: skip
    n_masks: int = setting(4, "dropout: masks per trained model", range=POSITIVE)
    mask_seed: int = setting(0, "dropout: seed of the masks")
    dropout_p: float | None = setting(None, "dropout: mask probability (null = each layer's p)", range=(0, 1))
    q_only: bool = setting(False, "dropout + TRAK: kernels from the plain models, dropout members only for Q")
    combine: str = setting("mean", "one fit per member with the scores averaged (mean, the naive ensemble), or "
                           "the base's own multi-model average (native; for TRAK exactly trak's scores)",
                           choices=COMBINE, main=True)  # fmt: skip
    n_adapters: int = setting(4, "lora: number of LoRA members", range=POSITIVE)
    rank: int = setting(LoraSettings.rank, "lora: LoRA rank", range=POSITIVE)
    lora_alpha: float | None = setting(LoraSettings.alpha, "lora: scaling numerator (null = 2 x rank)")
    lora_epochs: int = setting(LoraSettings.epochs, "lora: fine-tuning epochs per member", range=POSITIVE)
    lora_lr: float | None = setting(LoraSettings.lr, "lora: fine-tuning lr (null = the run's)")
    lora_seed: int = setting(0, "lora: member i is fine-tuned with seed lora_seed + i")
    base_seed: int | None = setting(LoraSettings.base_seed, "lora: run seed of the base (null = the first)")
    lora_targets: Sequence[str] | None = setting(LoraSettings.targets, "lora: module names with adapters "
                                                 "(null = every Linear / Conv2d of the body)")  # fmt: skip
    reinit_head: bool = setting(LoraSettings.reinit_head, "lora: re-initialise the head before fine-tuning")

    _KIND_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "independent": ("n_models",),
        "dropout": ("n_models", "n_masks", "mask_seed", "dropout_p", "q_only"),
        "lora": ("n_adapters", "rank", "lora_alpha", "lora_epochs", "lora_lr", "lora_seed", "base_seed",
                 "lora_targets", "reinit_head"),
    }  # fmt: skip

    def check(self) -> None:
        key, _ = member_setting(self.base)
        if key in self.base_settings:
            raise ConfigError(f"leave {key!r} out of base_settings: the ensemble chooses the models.")
        if self.dropout_p is not None and self.dropout_p >= 1:
            raise ConfigError(f"dropout_p must be in [0, 1) or None, got {self.dropout_p!r}.")
        if self.q_only and (self.kind != "dropout" or self.base != "trak" or self.combine != "native"):
            raise ConfigError(
                "q_only (the TRAK trick) needs kind='dropout', base='trak' and combine='native'."
            )
        if self.kind == "lora":
            self.lora()  # validates
        # the base's deprecated names are mapped (its settings themselves are checked when it is built)
        base_cls = METHOD_SETTINGS[self.base]
        object.__setattr__(
            self, "base_settings", {base_cls.ALIASES.get(k, k): v for k, v in self.base_settings.items()}
        )

    def lora(self) -> LoraSettings:
        """The LoRA members' settings."""
        return LoraSettings(self.rank, self.lora_alpha, self.lora_targets, self.lora_epochs, self.lora_lr,
                            self.base_seed, self.reinit_head)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        keep = ("base", "base_settings", "kind", "combine", *self._KIND_FIELDS[self.kind])
        return {k: v for k, v in super().as_dict().items() if k in keep}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "base_settings": _base_config(self.base, dict(self.base_settings))}


@dataclass(frozen=True)
class DTDASettings(MethodSettings):
    """d-TDA; `base_settings` is stored with the base's defaults filled in (cached results follow default
    changes), over `DTDA_BASE_SETTINGS[base]`."""

    base: str = setting("influence", "per-seed attribution", choices=DTDA_BASES, main=True)
    measurement: str = setting(
        "loss", "what is measured on the test example", choices=MEASUREMENTS, main=True
    )
    target_class: int | None = setting(None, "class whose measurement is taken (null = each query's label)")
    seeds: str | int | Sequence[int] = setting("all", "run seeds forming the distribution: all, first, an int "
                                               "n or a list", choices=SEED_CHOICES, open=True)  # fmt: skip
    base_settings: dict = setting({}, "the base's settings (not seeds / n_models: d-TDA fits one per seed)")

    def check(self) -> None:
        aliases = METHOD_SETTINGS[self.base].ALIASES  # old names, e.g. from a stored artifact key
        given = {**DTDA_BASE_SETTINGS.get(self.base, {}), **self.base_settings}
        given = {aliases.get(k, k): v for k, v in given.items()}
        clash = sorted({"seeds", "n_models", "progress"} & set(given))
        if clash:
            raise ConfigError(f"base_settings may not set {clash}: d-TDA fits one base per seed itself.")
        full = METHOD_SETTINGS[self.base].build(self.base, **given).as_dict()
        object.__setattr__(
            self, "base_settings", {k: v for k, v in full.items() if k not in ("seeds", "n_models")}
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "base_settings": _base_config(self.base, dict(self.base_settings))}


METHOD_SETTINGS: dict[str, type[MethodSettings]] = {
    "grad_dot": GradSimilaritySettings,
    "grad_cos": GradSimilaritySettings,
    "tracin": TracInSettings,
    "repsim": RepSimSettings,
    "influence": InfluenceSettings,
    "trak": TRAKSettings,
    "source": SourceSettings,
    "unrolled": UnrolledSettings,
    "airrep": AirRepSettings,
    "ensemble": EnsembleSettings,
    "dtda": DTDASettings,
}
