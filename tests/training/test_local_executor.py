"""LocalExecutor: results in job order, and the caller's tensors are left where they are."""

from __future__ import annotations

import numpy as np
import torch

from tda_explorer.training.executor import LocalExecutor


def column_sum(job: tuple[torch.Tensor, int]) -> float:
    x, col = job
    return float(x[:, col].sum())


def test_process_pool_returns_results_in_job_order_and_leaves_tensors_in_place():
    x = torch.arange(600, dtype=torch.float32).reshape(200, 3)
    view = x.numpy()  # a numpy view of the tensor's memory, as the app keeps for cached datasets
    before_ptr, expected = x.data_ptr(), view.copy()
    jobs = [(x, c) for c in (2, 0, 1, 2)]
    seen = []
    out = LocalExecutor(2).map(column_sum, jobs, on_result=lambda i, r: seen.append(i))
    assert out == [float(x[:, c].sum()) for c in (2, 0, 1, 2)] and sorted(seen) == [0, 1, 2, 3]
    # sending the jobs must not move the tensor into shared memory (which frees the memory the view reads)
    assert x.data_ptr() == before_ptr and not x.is_shared()
    np.testing.assert_array_equal(view, expected)
    assert LocalExecutor(1).map(column_sum, jobs) == out
