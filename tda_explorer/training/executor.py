"""Executors run independent jobs (seeds, subset retrainings) and return results in input order.

`Executor.map(fn, jobs, progress)` is the whole interface. `LocalExecutor` runs
in-process (workers=1) or on a local process pool (spawned workers, each
single-threaded, so results equal the in-process ones bit for bit). By default
(no `workers`, no `$TDA_WORKERS`) it decides per call: the first job runs in-process
and is timed, and the pool is started for the rest only when jobs take at least
`POOL_MIN_JOB_SECONDS` each — a spawned worker costs seconds to start (torch import)
and per job to ship data, so small jobs are far faster in-process (measured on 2
cores: 50 logistic-regression retrainings on digits 10.2 s in-process, 110.8 s on a
2-worker pool). In-process jobs can report progress within the job (epochs) through
`job_progress()`. A `progress.cancel_scope` is checked before each job and at each report (in-process
jobs also check it per epoch): `Cancelled` stops the map, and a pool drops its queued jobs. Pool
workers end when the parent process dies (a watchdog thread).
`training.ray_executor.RayExecutor` runs the same jobs on Ray (a local instance or
a cluster); `make_executor` picks one by name (`--executor` / `$TDA_EXECUTOR`).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

from tda_explorer.errors import ConfigError
from tda_explorer.progress import check_cancelled
from tda_explorer.training.executor_base import Executor
from tda_explorer.training.trainer import Progress

POOL_MIN_JOB_SECONDS = 5.0
_IN_PROCESS: contextvars.ContextVar[bool] = contextvars.ContextVar("in_process", default=False)
_JOB_PROGRESS: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("job_progress", default=None)


def job_progress() -> Progress | None:
    """A Progress for the job running now in-process (`(done, total, msg)` within the job, e.g. epochs), or
    None (in a pool worker, or outside an executor). The executor maps it onto its overall progress."""
    return _JOB_PROGRESS.get()


@contextlib.contextmanager
def in_process():
    """Within the block (this thread / context), a `LocalExecutor()` made without `workers` runs in-process
    unless `$TDA_WORKERS` is set, also where a method makes one itself (e.g. TRAK's held-out retrainings):
    the app's background steps use it, since a process pool spawned from a server thread only adds load."""
    token = _IN_PROCESS.set(True)
    try:
        yield
    finally:
        _IN_PROCESS.reset(token)


def _watch_parent(parent: int, interval: float = 1.0) -> None:
    """Exit this worker as soon as its parent process is gone (a kill -9 of the CLI leaves no orphans)."""
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(parent: int | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watchdog").start()
        with contextlib.suppress(Exception):  # Linux: also ask the kernel to signal us when the parent dies
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)


class LocalExecutor(Executor):
    """In-process, local process-pool, or automatic (the default) executor.

    Args:
        workers: number of worker processes (1 = always in-process); None = `$TDA_WORKERS` if set, else
            automatic: up to min(cpu count, 4) workers, used only when a job takes at least
            `POOL_MIN_JOB_SECONDS` (the first job, run in-process, is timed).
    """

    def __init__(self, workers: int | None = None) -> None:
        self.auto = False
        if workers is None and os.environ.get("TDA_WORKERS"):
            workers = int(os.environ["TDA_WORKERS"])
        if workers is None and _IN_PROCESS.get():
            workers = 1
        if workers is None:
            self.auto, workers = True, min(os.cpu_count() or 1, 4)
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}.")
        self.workers = workers

    def _run(self, fn, jobs, record, progress) -> None:
        n = len(jobs)
        serial = self.workers == 1 or n <= 1
        first = 0
        if self.auto and not serial:  # time the first job in-process, then decide
            start = time.perf_counter()
            self._run_here(fn, jobs, 0, record, progress)
            first = 1
            serial = time.perf_counter() - start < POOL_MIN_JOB_SECONDS or n - 1 <= 1
        if serial:
            for i in range(first, n):
                self._run_here(fn, jobs, i, record, progress)
        else:
            self._run_pool(fn, jobs, first, record)

    @staticmethod
    def _run_here(fn, jobs, i, record, progress) -> None:
        """Job i in this process; its own progress (if it reports any) moves the overall bar within the job."""
        n = len(jobs)

        check_cancelled()

        def within(done: int, total: int, msg: str) -> None:
            check_cancelled()
            if progress is not None and total > 0:
                progress(
                    round(i + min(done, total) / total, 3), n, f"job {i + 1}/{n}: {msg}"
                )  # a fraction of a job

        token = _JOB_PROGRESS.set(within if progress is not None else None)
        try:
            value = fn(jobs[i])
        finally:
            _JOB_PROGRESS.reset(token)
        record(i, value, i + 1)

    def _run_pool(self, fn, jobs, first, record) -> None:
        n = len(jobs)
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(
            min(self.workers, n - first), mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)
        ) as pool:
            # multiprocessing's pickler moves every CPU tensor it sends into shared memory in place (torch's
            # reduction), which would leave numpy views of the caller's tensors (e.g. a cached dataset's
            # labels) on freed memory. The workers get one deep copy of all jobs instead: a tensor shared
            # by the jobs is copied (and moved to shared memory) once.
            sent = copy.deepcopy(jobs[first:])
            futures = {pool.submit(fn, job): first + j for j, job in enumerate(sent)}
            try:
                for done, fut in enumerate(as_completed(futures), start=first + 1):
                    record(futures[fut], fut.result(), done)
                    check_cancelled()
            except BaseException:  # a failed job, Cancelled or Ctrl-C: don't start the queued jobs
                pool.shutdown(wait=False, cancel_futures=True)
                raise


EXECUTORS: tuple[str, ...] = ("local", "ray")
ENV_EXECUTOR = "TDA_EXECUTOR"


def make_executor(
    name: str | None = None, workers: int | None = None, ray_address: str | None = None
) -> Executor:
    """The executor called `name`: "local" (`LocalExecutor`, the default) or "ray" (`RayExecutor`).

    Args:
        name: "local" or "ray"; None = `$TDA_EXECUTOR`, else "ray" if `ray_address` is given, else "local".
        workers: local worker processes, or the CPUs of a local Ray instance (None = the default of each).
        ray_address: a Ray cluster to join (e.g. "ray://head:10001"); None starts a local Ray instance.

    Raises:
        ConfigError: an unknown name, or a Ray address with the local executor.
    """
    if name is None:
        name = os.environ.get(ENV_EXECUTOR) or ("ray" if ray_address else "local")
    name = name.strip().lower()
    if name not in EXECUTORS:
        raise ConfigError(
            f"executor {name!r} is not one of {', '.join(EXECUTORS)} (--executor / ${ENV_EXECUTOR})."
        )
    if name == "local":
        if ray_address:
            raise ConfigError(f"a Ray address ({ray_address!r}) needs the Ray executor: add --executor ray.")
        return LocalExecutor(workers)
    from tda_explorer.training.ray_executor import RayExecutor  # ray is imported only when used

    return RayExecutor(address=ray_address, workers=workers)
