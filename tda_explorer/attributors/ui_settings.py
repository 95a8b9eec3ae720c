"""The main settings of each attributor as the app offers them (name, kind, default, choices, help).

The app renders these generically; anything not listed keeps the attributor's own default, and the
full resolved settings still go into the score artifact's key. A dotted name ("data.n_subsets") is a
field of a nested settings dict (AirRep's `data={...}`); `settings_kwargs` turns the values the app
collected into the keyword arguments of `make_attributor`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tda_explorer.attributors.influence import DEFAULT_DAMPING_FACTOR


@dataclass(frozen=True)
class Setting:
    """One user-facing setting: `kind` is "choice", "int" or "float"; `choices` for "choice"; a "float" whose
    default is None may be left empty (the setting is then not passed: the attributor's own default, e.g.
    influence's damping_factor="auto", picks the value)."""

    name: str
    kind: str
    default: object
    choices: tuple = ()
    help: str = ""
    minimum: float | None = None


def _per_solver(values: dict[str, float]) -> str:
    """`{"ekfac": 0.1, "kfac": 0.1, "exact": 1.0}` -> "0.1 for ekfac / kfac, 1 for exact"."""
    groups: dict[float, list[str]] = {}
    for solver, value in values.items():
        groups.setdefault(value, []).append(solver)
    return ", ".join(f"{value:g} for {' / '.join(names)}" for value, names in groups.items())


PARAMS_HEAD = Setting(
    "params",
    "choice",
    "head",
    ("head", "all"),
    "gradient over the last layer or all trainable parameters (text model: LoRA + head)",
)
PARAMS_ALL = Setting(
    "params",
    "choice",
    "all",
    ("all", "head"),
    "gradient over all trainable parameters (text model: LoRA + head) or the last layer",
)

MAIN_SETTINGS: dict[str, tuple[Setting, ...]] = {
    "grad_dot": (PARAMS_HEAD,),
    "grad_cos": (PARAMS_HEAD,),
    "tracin": (PARAMS_HEAD,),
    "influence": (
        Setting(
            "solver", "choice", "ekfac", ("ekfac", "kfac", "cg", "lissa", "exact"), "inverse-Hessian solver"
        ),
        PARAMS_ALL,
        Setting(
            "damping_factor",
            "float",
            None,
            help="damping as a multiple of the mean eigenvalue; empty = auto: for ekfac / kfac chosen on "
            "the validation split (a few retrainings, cached), otherwise the solver's default ("
            + _per_solver(DEFAULT_DAMPING_FACTOR)
            + ")",
            minimum=0.0,
        ),
    ),
    "trak": (
        Setting("proj_dim", "int", 2048, help="random projection dimension", minimum=1),
        Setting("n_models", "int", 1, help="models (seeds of the run) averaged", minimum=1),
        Setting(
            "proj_layout",
            "choice",
            "dense",
            ("dense", "kronecker"),
            "one projection of the whole gradient, or a per-layer Kronecker projection (Linear/Conv "
            "models: far faster, allows a wider proj_dim)",
        ),
        Setting(
            "proj_type",
            "choice",
            "sjlt",
            ("sjlt", "rademacher", "gaussian"),
            "entries of the projection: a count sketch (sjlt, default: one +-1 per gradient coordinate; same "
            "LDS in our MNIST benchmarks, 3x (logreg) to 21x (MLP) faster), or dense random +-1 / Gaussian",
        ),
    ),
    "repsim": (),
    "ensemble": (
        Setting(
            "base",
            "choice",
            "trak",
            ("trak", "grad_dot", "grad_cos", "tracin", "influence"),
            "the gradient attributor averaged over the ensemble members",
        ),
        Setting(
            "kind",
            "choice",
            "independent",
            ("independent", "dropout", "lora"),
            "members: the run's seeds, fixed dropout masks of each seed, or LoRA fine-tunes of one seed",
        ),
        Setting(
            "combine",
            "choice",
            "mean",
            ("mean", "native"),
            "the base's own multi-model average, or one fit per member with the scores averaged",
        ),
    ),
    "source": (
        Setting("segments", "int", 3, help="training segments, each with its own curvature", minimum=1),
        Setting(
            "damping_factor", "float", 1e-3, help="damping as a multiple of the mean eigenvalue", minimum=0.0
        ),
    ),
    "unrolled": (
        Setting(
            "seeds",
            "choice",
            "first",
            ("first", "all"),
            "replay and differentiate the first seed's training, or every seed's (scores averaged)",
        ),
    ),
    "dtda": (
        Setting(
            "base", "choice", "influence", ("influence", "trak", "source", "unrolled"), "per-seed attribution"
        ),
        Setting(
            "measurement",
            "choice",
            "loss",
            ("loss", "margin", "prob"),
            "what is measured on the test example",
        ),
    ),
    "airrep": (
        Setting(
            "data.n_subsets",
            "int",
            256,
            help="subset retrainings the encoder learns from (the cost)",
            minimum=2,
        ),
        Setting(
            "encoder.image_backbone",
            "choice",
            "cnn",
            ("cnn", "mlp"),
            "image encoder backbone (mlp is cheaper on a CPU; ignored for text and tables)",
        ),
        Setting("training.epochs", "int", 30, help="maximum encoder training epochs", minimum=1),
    ),
}


def main_settings(name: str) -> tuple[Setting, ...]:
    """The settings the app shows for attributor `name` (none for an unlisted attributor)."""
    return MAIN_SETTINGS.get(name, ())


def settings_kwargs(values: dict[str, object]) -> dict[str, object]:
    """Keyword arguments for `make_attributor` from `{setting name: value}`; dotted names are nested.

    `{"pooling": "sum", "data.n_subsets": 32}` -> `{"pooling": "sum", "data": {"n_subsets": 32}}`.
    """
    out: dict[str, object] = {}
    for name, value in values.items():
        *parents, leaf = name.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})  # type: ignore[assignment]
        node[leaf] = value  # type: ignore[index]
    return out
