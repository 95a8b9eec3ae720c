"""Helpers shared by the evaluation modules (not public API): checks, fingerprints, losses, progress."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tda_explorer.data.example_set import examples_fingerprint as fingerprint  # noqa: F401
from tda_explorer.errors import ConfigError
from tda_explorer.training.trainer import Progress


def check_int(value: object, name: str, minimum: int = 0) -> int:
    """`value` as an int if it is an integer >= `minimum`; ConfigError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_seeds(seeds: Sequence[int], name: str = "seeds") -> tuple[int, ...]:
    """A non-empty tuple of distinct non-negative int seeds; ConfigError otherwise."""
    if isinstance(seeds, numbers.Integral):
        seeds = (seeds,)
    out = tuple(check_int(s, f"each of {name}") for s in seeds)
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"{name} must be a non-empty list of distinct integers, got {list(seeds)}.")
    return out


def check_fractions(fractions: Sequence[float], name: str) -> tuple[float, ...]:
    """A non-empty tuple of floats in [0, 1); ConfigError otherwise."""
    out = []
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not 0.0 <= float(f) < 1.0:
            raise ConfigError(f"each of {name} must be a number in [0, 1), got {f!r}.")
        out.append(float(f))
    if not out:
        raise ConfigError(f"{name} must list at least one fraction.")
    return tuple(out)


def as_float64(values: object, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """`values` (tensor or array-like) as a finite float64 array of the given shape (None = any size).

    Raises:
        ConfigError: wrong number of dimensions, a wrong size, or a NaN/Inf entry.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape, strict=True)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ConfigError(f"{name} must have shape {want}, got {list(arr.shape)}.")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ConfigError(f"{name} has {bad} NaN or infinite entries; every score must be finite.")
    return arr


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy in float64: logits `[..., n, C]`, labels `[n]` -> `[..., n]` (nats)."""
    lead = logits.shape[:-1]
    flat = logits.double().reshape(-1, logits.shape[-1])
    lab = labels.expand(lead).reshape(-1)
    return F.cross_entropy(flat, lab, reduction="none").reshape(lead)


def offset_progress(progress: Progress | None, done_before: int, total: int, what: str) -> Progress | None:
    """A progress callback that adds `done_before` to the count and reports against `total`."""
    if progress is None:
        return None

    def report(done: int, _total: int, msg: str) -> None:
        progress(done_before + done, total, f"{what}: {msg}")

    return report
