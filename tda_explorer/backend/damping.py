"""Damping of an inverse curvature: the one rule from relative to absolute, and the one check.

Methods add `lambda` to a PSD curvature before inverting it (`backend.inverse`): an absolute `damping`
(units of the curvature's eigenvalues), or None and a relative `damping_factor`, so that
`lambda = damping_factor x mean eigenvalue` of the curvature at hand (each solver says which mean).
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
