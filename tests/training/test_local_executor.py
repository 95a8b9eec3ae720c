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


def _pid(_job) -> int:
    import os

    return os.getpid()


def _report_epochs(job: int) -> int:
    from tda_explorer.training.executor import job_progress

    report = job_progress()
    for e in range(4):
        if report is not None:
            report(e + 1, 4, f"epoch {e + 1}")
    return job


def test_automatic_executor_keeps_small_jobs_in_process(monkeypatch):
    import os

    monkeypatch.delenv("TDA_WORKERS", raising=False)
    ex = LocalExecutor()
    assert ex.auto
    assert set(ex.map(_pid, range(6))) == {os.getpid()}  # first job took < POOL_MIN_JOB_SECONDS
    monkeypatch.setenv("TDA_WORKERS", "3")
    assert not LocalExecutor().auto and LocalExecutor().workers == 3


def test_automatic_executor_uses_the_pool_for_slow_jobs(monkeypatch):
    import os

    import tda_explorer.training.executor as executor

    monkeypatch.delenv("TDA_WORKERS", raising=False)
    monkeypatch.setattr(executor, "POOL_MIN_JOB_SECONDS", 0.0)  # every job counts as slow
    pids = executor.LocalExecutor().map(_pid, range(4))
    assert pids[0] == os.getpid() and os.getpid() not in pids[1:]  # first timed here, the rest on the pool


def test_progress_advances_within_an_in_process_job():
    seen = []
    LocalExecutor(1).map(_report_epochs, [0, 1], lambda d, t, m: seen.append((d, t, m)))
    assert [d for d, _, _ in seen] == [0.25, 0.5, 0.75, 1.0, 1, 1.25, 1.5, 1.75, 2.0, 2]
    assert seen[1][2] == "job 1/2: epoch 2"


def test_pool_workers_end_when_the_parent_dies(tmp_path):
    """A parent killed with SIGKILL leaves no pool worker behind (issue 20 item 16)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from tda_explorer.training.executor import LocalExecutor\n"
        "def slow(i):\n"
        "    open(sys.argv[1] + f'/worker{i}', 'w').write(str(os.getpid()))\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    LocalExecutor(2).map(slow, [0, 1])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env)
    deadline = time.time() + 90
    while time.time() < deadline and len(list(tmp_path.glob("worker*"))) < 2:
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in tmp_path.glob("worker*")]
    assert len(pids) == 2, "the workers did not start"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    alive = pids
    while time.time() < deadline and alive:
        time.sleep(0.2)
        alive = [p for p in pids if _alive(p)]
    assert not alive, f"workers {alive} outlived their parent"


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as ended
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False
