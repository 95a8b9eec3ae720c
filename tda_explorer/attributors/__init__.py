"""Attributors behind one protocol and one registry (`make_attributor(name, **settings)`)."""

from __future__ import annotations

# Importing a method's module registers it (grad_dot also registers grad_cos).
from tda_explorer.attributors import (  # noqa: F401
    airrep,
    dtda,
    ensemble,
    grad_dot,
    influence,
    repsim,
    source,
    tracin,
    trak,
    unrolled,
)
from tda_explorer.attributors.base import ATTRIBUTORS, Attributor, make_attributor, register
from tda_explorer.attributors.method_settings import METHOD_SETTINGS

__all__ = ["ATTRIBUTORS", "METHOD_SETTINGS", "Attributor", "make_attributor", "register"]
