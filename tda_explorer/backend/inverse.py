"""Damped inverse curvature: the one rule that turns relative damping into absolute damping.

Every inverse-curvature method (influence's solvers, Source's segments, TRAK's kernel) adds a damping
`lambda` to its curvature before inverting it: `(H + (wd + lambda) I)^{-1}`. The user gives either an
absolute `damping` (units of H's eigenvalues: loss per squared parameter unit for a Hessian of the mean
loss, squared feature units for TRAK's `Phi^T Phi`) or leaves it None and gives a relative
`damping_factor`, so that `lambda = damping_factor x mean eigenvalue` of the matrix at hand (each
caller says which mean it uses: per layer for K-FAC / EK-FAC, of the whole H for exact / CG / LiSSA,
`trace / min(k, N)` or `trace / N` for TRAK). `check_damping` is the one validation of these numbers.
"""

from __future__ import annotations

from collections.abc import Callable

from tda_explorer.errors import ConfigError


def check_damping(
    damping: float | None, damping_factor: float | None, weight_decay: float | None = None
) -> None:
    """ConfigError unless the absolute damping (None = relative), its factor and the weight decay are >= 0."""
    for name, value in (
        ("damping", damping),
        ("damping_factor", damping_factor),
        ("weight_decay", weight_decay),
    ):
        if value is not None and not value >= 0:  # also refuses NaN
            raise ConfigError(f"{name} must be >= 0, got {value}.")


def absolute_damping(
    damping: float | None, damping_factor: float, mean_eigenvalue: float | Callable[[], float]
) -> float:
    """`lambda` added to the curvature: `damping` when given, else `damping_factor x mean_eigenvalue`.

    `mean_eigenvalue` may be a callable, evaluated only when needed (a Hutchinson estimate costs HVPs).
    """
    if damping is not None:
        return damping
    mean = mean_eigenvalue() if callable(mean_eigenvalue) else mean_eigenvalue
    return damping_factor * mean
