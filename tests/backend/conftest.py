"""Backend tests run single-threaded and in float64 on the CPU."""

from __future__ import annotations

from tests.fixtures import float64, single_thread  # noqa: F401 (autouse fixtures for this folder)
