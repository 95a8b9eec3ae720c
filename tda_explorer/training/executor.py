"""Executors run independent jobs (seeds, subset retrainings) and return results in input order.

`Executor.map(fn, jobs, progress)` is the whole interface. `LocalExecutor` runs
in-process (workers=1) or on a local process pool (spawned workers, each
single-threaded, so results equal the in-process ones bit for bit).
`training.ray_executor.RayExecutor` runs the same jobs on Ray (a local instance or
a cluster); `make_executor` picks one by name (`--executor` / `$TDA_EXECUTOR`).
"""

from __future__ import annotations

import copy
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
            # multiprocessing's pickler moves every CPU tensor it sends into shared memory in place (torch's
            # reduction), which would leave numpy views of the caller's tensors (e.g. a cached dataset's
            # labels) on freed memory. The workers get one deep copy of all jobs instead: a tensor shared
            # by the jobs is copied (and moved to shared memory) once.
            sent = copy.deepcopy(jobs)
            futures = {pool.submit(fn, job): i for i, job in enumerate(sent)}
            for done, fut in enumerate(as_completed(futures), start=1):
                i = futures[fut]
                results[i] = fut.result()
                if on_result is not None:
                    on_result(i, results[i])
                if progress is not None:
                    progress(done, len(jobs), f"job {i + 1}/{len(jobs)} done")
        return results


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
