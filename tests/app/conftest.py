"""AppTests run on a shared, loaded machine: the cost model's estimates scale with the load average, so a
step could ask "Start / Cancel" in one run and not in the next. Here no step asks unless a test says so
(tests/app/test_jobs.py sets the threshold itself)."""

from __future__ import annotations

import pytest

import tda_explorer.estimates as estimates


@pytest.fixture(autouse=True)
def _steps_start_without_asking(monkeypatch):
    monkeypatch.setattr(estimates, "ASK_ABOVE_S", float("inf"))
