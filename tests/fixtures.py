"""Fixtures shared by several test folders; a folder's conftest imports the ones it uses."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """Small tensors: one thread is much faster than contended multi-threading on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def float64(monkeypatch):
    """Compute in float64 on the CPU (exactness checks)."""
    monkeypatch.setenv("TDA_DTYPE", "float64")
    monkeypatch.setenv("TDA_DEVICE", "cpu")


def run_together(target: Callable, args: Sequence[tuple], timeout: float) -> None:
    """Start one spawned process per argument tuple, release them at once (`target(*a, start)` waits on
    the `start` event it gets last), and assert each exits with code 0 within `timeout` seconds."""
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=target, args=(*a, start)) for a in args]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=timeout)
        assert p.exitcode == 0


def assert_same_attribution(
    a, b, queries, groups, rtol: float, atol: float, group_atol: float | None = None
) -> None:
    """Two fitted attributors give the same scores, self-influence and group scores (within tolerances)."""
    torch.testing.assert_close(a.score(queries), b.score(queries), rtol=rtol, atol=atol)
    torch.testing.assert_close(a.self_influence(), b.self_influence(), rtol=rtol, atol=atol)
    torch.testing.assert_close(
        a.score_groups(queries, groups), b.score_groups(queries, groups), rtol=rtol, atol=group_atol or atol
    )
