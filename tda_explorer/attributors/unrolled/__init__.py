"""Exact unrolled attribution (Hara et al. 2019; MAGIC, Ilyas & Engstrom 2025): `replay` (the run's
trajectory, checkpointed), `reverse` (reverse mode through each optimizer step), `attributor` (the
registered "unrolled" Attributor)."""

from __future__ import annotations

from tda_explorer.attributors.unrolled.attributor import Unrolled
from tda_explorer.attributors.unrolled.replay import Trajectory

__all__ = ["Trajectory", "Unrolled"]
