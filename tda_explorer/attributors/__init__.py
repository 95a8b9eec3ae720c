"""Attributors behind one protocol and one registry (`make_attributor(name, **settings)`)."""

from __future__ import annotations

from tda_explorer.attributors import grad_dot  # noqa: F401  (registers grad_dot, grad_cos)
from tda_explorer.attributors.base import ATTRIBUTORS, Attributor, make_attributor, register

__all__ = ["ATTRIBUTORS", "Attributor", "make_attributor", "register"]
