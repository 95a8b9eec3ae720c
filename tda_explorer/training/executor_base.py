"""The executor interface: `Executor.map(fn, jobs, progress, on_result)` runs independent jobs and returns
their results in input order. The implementations are `training.executor.LocalExecutor` (in-process or a
local process pool) and `training.ray_executor.RayExecutor`; `training.executor.make_executor` picks one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from tda_explorer.training.trainer import Progress

Record = Callable[[int, Any, int], None]
"""`record(i, result of job i, jobs finished so far)`: stores the result, then reports it (see `Executor.map`)."""


class Executor(ABC):
    """Runs `fn(job)` for every job; returns the results in the order of `jobs`.

    `map` is the whole interface (anything with this `map` can stand in for an executor); the package's
    executors subclass this and implement `_run`, which runs the jobs and reports each one to `record`.
    """

    def map(
        self,
        fn: Callable[[Any], Any],
        jobs: Sequence[Any],
        progress: Progress | None = None,
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        """Run the jobs; `on_result(i, result)` is called in this process as each one finishes, then
        `progress(done, total, "job i/n done")`.

        Args:
            fn: a picklable function (module level in an importable module) for the pool/Ray executors.
            jobs: the job descriptions (picklable for the pool/Ray executors).

        Returns:
            `[fn(jobs[0]), fn(jobs[1]), ...]`.
        """
        jobs = list(jobs)
        results: list[Any] = [None] * len(jobs)

        def record(i: int, value: Any, done: int) -> None:
            results[i] = value
            if on_result is not None:
                on_result(i, value)
            if progress is not None:
                progress(done, len(jobs), f"job {i + 1}/{len(jobs)} done")

        if jobs:
            self._run(fn, jobs, record, progress)
        return results

    @abstractmethod
    def _run(
        self, fn: Callable[[Any], Any], jobs: list[Any], record: Record, progress: Progress | None
    ) -> None:
        """Run every job, calling `record(i, fn(jobs[i]), jobs finished so far)` here as job i finishes."""
