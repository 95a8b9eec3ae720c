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


def digits_gd_problem(
    factory: Callable[[], torch.nn.Module], n_train: int, test_start: int, n_test: int, steps: int, lr: float,
    checkpoint_every: int | None = None,
):  # fmt: skip
    """Digits `[n, 1, 8, 8]` in [0, 1]: the first `n_train` for training, `n_test` from `test_start` as queries;
    `factory()`'s model trained by `steps` full-batch GD steps on the mean cross-entropy (the peers' tests).

    Returns:
        `(model, checkpoints, tr_x, tr_y, te_x, te_y)`; `checkpoints` = state dicts after every
        `checkpoint_every` steps (empty when None).
    """
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y, dtype=torch.long)
    tr_x, tr_y = x[:n_train], y[:n_train]
    te_x, te_y = x[test_start : test_start + n_test], y[test_start : test_start + n_test]
    model = factory()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    checkpoints = []
    for step in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(tr_x), tr_y).backward()
        opt.step()
        if checkpoint_every and step % checkpoint_every == checkpoint_every - 1:
            checkpoints.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return model, checkpoints, tr_x, tr_y, te_x, te_y


def digits_head(n_train: int, n_val: int, n_test: int, tag: list[int]):
    """The first `n_train` / `n_val` / `n_test` examples of the digits splits (seed 0), `tag` recorded as the
    spec's "tiny" option (so in every artifact key)."""
    import numpy as np

    from tda_explorer.data import DatasetSplits, load_digits_splits

    full = load_digits_splits(seed=0)
    return DatasetSplits(
        train=full.train.subset(np.arange(n_train)),
        val=full.val.subset(np.arange(n_val)),
        test=full.test.subset(np.arange(n_test)),
        spec={**full.spec, "options": {**full.spec["options"], "tiny": tag}},
    )
