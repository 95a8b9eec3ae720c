"""Executors run independent jobs (seeds, subset retrainings) and return results in input order.

`Executor.map(fn, jobs, progress)` is the whole interface. `LocalExecutor` runs
in-process (workers=1) or on a local process pool (spawned workers, each
single-threaded, so results equal the in-process ones bit for bit). A Ray
implementation can be added behind the same interface.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Protocol

from tda_explorer.errors import ConfigError
from tda_explorer.training.trainer import Progress


class Executor(Protocol):
    """Runs `fn(job)` for every job; returns the results in the order of `jobs`."""

    def map(
        self,
        fn: Callable[[Any], Any],
        jobs: Sequence[Any],
        progress: Progress | None = None,
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """Run the jobs; `on_result(i, result)` is called in this process as each one finishes."""
        ...


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


class LocalExecutor:
    """In-process (workers=1) or local process-pool executor.

    Args:
        workers: number of worker processes; None = `$TDA_WORKERS` or min(cpu count, 4).
    """

    def __init__(self, workers: int | None = None) -> None:
        if workers is None:
            workers = int(os.environ.get("TDA_WORKERS", min(os.cpu_count() or 1, 4)))
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}.")
        self.workers = workers

    def map(
        self,
        fn: Callable[[Any], Any],
        jobs: Sequence[Any],
        progress: Progress | None = None,
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        jobs = list(jobs)
        results: list[Any] = [None] * len(jobs)
        if self.workers == 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                results[i] = fn(job)
                if on_result is not None:
                    on_result(i, results[i])
                if progress is not None:
                    progress(i + 1, len(jobs), f"job {i + 1}/{len(jobs)} done")
            return results
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(
            min(self.workers, len(jobs)), mp_context=ctx, initializer=_init_worker
        ) as pool:
            futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            for done, fut in enumerate(as_completed(futures), start=1):
                i = futures[fut]
                results[i] = fut.result()
                if on_result is not None:
                    on_result(i, results[i])
                if progress is not None:
                    progress(done, len(jobs), f"job {i + 1}/{len(jobs)} done")
        return results
