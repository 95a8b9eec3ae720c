"""The main settings of each attributor as the app offers them (name, kind, default, choices, help).

The app renders these generically; anything not listed keeps the attributor's own default, and the
full resolved settings still go into the score artifact's key.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    """One user-facing setting: `kind` is "choice", "int" or "float"; `choices` for "choice"."""

    name: str
    kind: str
    default: object
    choices: tuple = ()
    help: str = ""
    minimum: float | None = None


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
            "damping_factor", "float", 0.1, help="damping as a multiple of the mean eigenvalue", minimum=0.0
        ),
    ),
    "trak": (
        Setting("proj_dim", "int", 2048, help="random projection dimension", minimum=1),
        Setting("n_models", "int", 1, help="models (seeds of the run) averaged", minimum=1),
    ),
    "repsim": (),
}


def main_settings(name: str) -> tuple[Setting, ...]:
    """The settings the app shows for attributor `name` (none for an unlisted attributor)."""
    return MAIN_SETTINGS.get(name, ())
