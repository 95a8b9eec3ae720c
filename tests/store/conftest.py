"""Fixtures for the store tests: a fresh workspace under tmp_path and a way to run code in a child."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tda_explorer.store import Workspace

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """An empty workspace in `tmp_path/ws`."""
    return Workspace(tmp_path / "ws")


@pytest.fixture
def spawn_python() -> Callable[..., subprocess.Popen[str]]:
    """Start `python -c code args...` importing tda_explorer from this checkout, stdout/stderr piped."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("TDA_WORKSPACE", None)

    def spawn(code: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    return spawn
