"""An Executor on Ray: the same jobs as `LocalExecutor`, spread over a local Ray instance or a cluster.

`RayExecutor.map(fn, jobs, progress, on_result)` submits `fn(job)` as Ray tasks (one CPU each by
default), keeps at most `max_in_flight` of them queued at once (each job carries its data, so an
unbounded queue would copy the whole workload into the object store), and calls `on_result(i, result)`
in this process as each one finishes — that is where callers save a finished seed or shard, so an
interrupted map resumes from what was saved. Results come back in the order of `jobs`.

Determinism: every task runs with `torch.set_num_threads(1)` (as `LocalExecutor`'s workers do), so a
job gives bit-identical results on Ray, in a local process pool and in-process, for the same seeds.

Where Ray runs:
- `address=None` and Ray not yet initialised: a local Ray instance with `workers` CPUs (default: all
  cores) and no dashboard is started on first use; `shutdown()` (or `with RayExecutor() as ex:`) stops
  it. If `$RAY_ADDRESS` is set, Ray itself joins that cluster instead.
- `address="ray://head:10001"` (Ray Client) or `"head:6379"` / `"auto"` (on a cluster node): joins an
  existing cluster. Its nodes need this project's pinned requirements (`requirements.txt`, same Python
  minor version); the `tda_explorer` package itself is shipped with the job (`runtime_env.py_modules`),
  so the cluster runs exactly the driver's code.
- Ray already initialised by the caller (e.g. a notebook or a test): used as it is, never shut down here.

Fault tolerance: a task whose worker process or node dies is retried up to `max_retries` times by Ray;
an exception raised by `fn` itself is not retried and is re-raised here (its original type, so a
`DataError` stays a `DataError`) after the remaining tasks are cancelled.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tda_explorer.errors import ConfigError
from tda_explorer.training.executor_base import Executor

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _run_job(fn: Callable[[Any], Any], job: Any) -> Any:
    """Ray task body: single-threaded torch (bit-identical to the local executor), then `fn(job)`."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return fn(job)


class RayExecutor(Executor):
    """Runs Executor jobs as Ray tasks (see module docstring).

    Args:
        address: Ray cluster to join (`"ray://host:10001"`, `"host:6379"`, `"auto"`); None starts a
            local instance (or joins `$RAY_ADDRESS` if set), unless Ray is already initialised.
        workers: CPUs of the local instance (default: all cores); ignored when joining a cluster.
        cpus_per_job: CPUs Ray reserves for each task (1 = one single-threaded job per core).
        max_in_flight: tasks submitted but not yet collected; default twice the cluster's CPUs divided
            by `cpus_per_job` (at least 2).
        max_retries: times Ray reruns a task whose worker or node died (not for exceptions of `fn`).
        runtime_env: extra Ray runtime environment, merged over the one that makes `tda_explorer`
            importable on the workers.
        init_kwargs: extra keyword arguments for `ray.init` (e.g. `object_store_memory`, `_temp_dir`).
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        cpus_per_job: float = 1.0,
        max_in_flight: int | None = None,
        max_retries: int = 2,
        runtime_env: dict | None = None,
        init_kwargs: dict | None = None,
    ) -> None:
        if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
            raise ConfigError(f"workers must be >= 1, got {workers}.")
        if not cpus_per_job > 0:
            raise ConfigError(f"cpus_per_job must be > 0, got {cpus_per_job}.")
        if max_in_flight is not None and max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be >= 1, got {max_in_flight}.")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}.")
        self.address = address
        self.workers = None if workers is None else int(workers)
        self.cpus_per_job = float(cpus_per_job)
        self.max_in_flight = max_in_flight
        self.max_retries = int(max_retries)
        self.runtime_env = dict(runtime_env or {})
        self.init_kwargs = dict(init_kwargs or {})
        self._started = False

    def __repr__(self) -> str:
        where = self.address or "local"
        return f"RayExecutor(address={where!r}, workers={self.workers}, cpus_per_job={self.cpus_per_job})"

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    # --- lifecycle -----------------------------------------------------------------------------

    def _runtime_env(self, joining: bool) -> dict:
        """Make `tda_explorer` importable on the workers: PYTHONPATH locally, shipped code on a cluster."""
        if joining:
            env: dict = {"py_modules": [str(_PACKAGE_DIR)]}
        else:
            path = os.pathsep.join(p for p in (str(_PACKAGE_DIR.parent), os.environ.get("PYTHONPATH")) if p)
            env = {"env_vars": {"PYTHONPATH": path}}
        for k, v in self.runtime_env.items():
            env[k] = {**env[k], **v} if isinstance(v, dict) and isinstance(env.get(k), dict) else v
        return env

    def ray(self):
        """The `ray` module, initialised (started or joined as described in the module docstring)."""
        try:
            import ray
        except ImportError as e:  # pragma: no cover - ray is in requirements.txt
            raise ConfigError(
                "the Ray executor needs the 'ray' package; run `pip install -r requirements.txt`."
            ) from e
        if ray.is_initialized():
            return ray
        joining = bool(self.address or os.environ.get("RAY_ADDRESS"))
        kwargs: dict[str, Any] = {"runtime_env": self._runtime_env(joining), "log_to_driver": False}
        if joining:
            kwargs["address"] = self.address
        else:
            kwargs.update(num_cpus=self.workers or os.cpu_count() or 1, include_dashboard=False)
        kwargs.update(self.init_kwargs)
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            raise ConfigError(
                f"cannot reach the Ray cluster at {self.address or os.environ.get('RAY_ADDRESS')!r} ({e}); "
                "check the address (ray://<head>:10001 for Ray Client, <head>:6379 on a cluster node) "
                "or drop --ray-address to run on a local Ray instance."
            ) from e
        self._started = True
        return ray

    def shutdown(self) -> None:
        """Stop the Ray instance if this executor started it (no-op otherwise)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    # --- the Executor interface ----------------------------------------------------------------

    def _in_flight(self, ray) -> int:
        if self.max_in_flight is not None:
            return self.max_in_flight
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        return max(2, int(2 * cpus / self.cpus_per_job))

    def _run(self, fn, jobs, record, progress) -> None:
        """Run `fn(job)` for every job on Ray (`fn` and the jobs picklable, `fn` at module level in an
        importable module); at most `max_in_flight` tasks are submitted at a time."""
        ray = self.ray()
        task = ray.remote(_run_job).options(num_cpus=self.cpus_per_job, max_retries=self.max_retries)
        fn_ref = ray.put(fn)
        limit = self._in_flight(ray)
        pending: dict[Any, int] = {}
        submitted = done = 0
        try:
            while submitted < len(jobs) or pending:
                while submitted < len(jobs) and len(pending) < limit:
                    pending[task.remote(fn_ref, jobs[submitted])] = submitted
                    submitted += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ready[0])
                done += 1
                record(i, _get(ray, ready[0]), done)
        finally:
            for ref in pending:
                ray.cancel(ref)


def _get(ray, ref) -> Any:
    """`ray.get(ref)`, re-raising an exception of the task as its original type."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from e
        raise
