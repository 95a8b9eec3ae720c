"""Measuring a benchmark step: wall time, peak RSS, load average, threads, machine facts, isolation.

* `measured()` times a block (`time.perf_counter`) while `PeakRSS` (from the dattri peer runner: a psutil
  thread sampling this process's RSS every 20 ms) records the peak RSS *increase* over the block's start,
  and reads the 1-minute load average (`os.getloadavg`) before and after — on a shared machine wall times
  are only comparable at similar load.
* `set_threads(n)` fixes torch's intra-op threads (ours and dattri's run with the same number); the
  default threading of a busy 2-core box can make small ops two orders of magnitude slower.
* `release_memory()` runs the garbage collector and glibc's `malloc_trim`, so the next block's RSS
  baseline holds little freed-but-cached memory (used when steps share one process).
* `run_isolated(args)` runs `python -m benchmarks.run <args>` in a fresh interpreter (clean RSS baseline,
  own thread settings, a hard timeout); the harness runs every measured step this way by default.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import torch

from benchmarks.peers.dattri_runner import PeakRSS

ROOT = Path(__file__).resolve().parents[1]


def load_1m() -> float:
    """The 1-minute load average (NaN where the OS has none)."""
    try:
        return float(os.getloadavg()[0])
    except OSError:  # pragma: no cover - not on Linux/macOS
        return float("nan")


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass
class Measurement:
    """Cost of one measured block.

    Attributes:
        seconds: wall seconds of the block.
        peak_rss_mb: peak RSS increase over the block's start, MiB (sampled every 20 ms).
        load_1m_before / load_1m_after: 1-minute load average at the start and end of the block.
        threads: `torch.get_num_threads()` during the block.
        date: UTC start time.
    """

    seconds: float = float("nan")
    peak_rss_mb: float = float("nan")
    load_1m_before: float = float("nan")
    load_1m_after: float = float("nan")
    threads: int = 0
    date: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def measured() -> Iterator[Measurement]:
    """Time the block and sample its peak RSS; the yielded Measurement is filled in when the block exits."""
    m = Measurement(load_1m_before=load_1m(), threads=torch.get_num_threads(), date=now())
    with PeakRSS() as rss:
        start = time.perf_counter()
        try:
            yield m
        finally:
            m.seconds = time.perf_counter() - start
    m.peak_rss_mb = rss.peak_mb
    m.load_1m_after = load_1m()


def set_threads(n: int) -> int:
    """Set torch's intra-op threads to `n` (>= 1); returns the value now in effect."""
    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


def default_threads() -> int:
    """`$TDA_BENCH_THREADS`, else the number of CPUs (at most 4)."""
    return int(os.environ.get("TDA_BENCH_THREADS", min(os.cpu_count() or 1, 4)))


def release_memory() -> None:
    """Collect garbage and return freed heap memory to the OS (glibc `malloc_trim`, if available)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def warm_up() -> None:
    """Pay one-off costs before anything is timed, the same for ours and dattri's steps.

    The first `torch.func` transform imports `torch._dynamo` (seconds on a busy machine) and the first
    LAPACK call loads its kernels; dattri triggers the imports when it is imported, we would inside
    `fit`. A tiny `vmap(grad)`, `hessian`, `jvp` and the linear-algebra routines are run once here.
    """
    from torch.func import functional_call, grad, hessian, jvp, vmap

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 0])

    def loss(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(out, yi.unsqueeze(0))

    vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    hessian(lambda w: (x @ w).square().sum())(torch.randn(3))
    jvp(lambda w: (x @ w).sin(), (torch.randn(3),), (torch.randn(3),))
    a = torch.randn(6, 6, dtype=torch.float64)
    a = a @ a.T + torch.eye(6, dtype=torch.float64)
    torch.linalg.eigh(a), torch.linalg.cholesky(a), torch.linalg.solve(a, a), torch.linalg.pinv(a)
    torch.linalg.eigh(a.float()), torch.linalg.solve(a.float(), a.float())


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict:
    """JSON-able facts about the machine and the software the numbers depend on."""
    return {
        "date": now(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "dattri": _version("dattri"),
        "cuda": torch.cuda.is_available(),
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_1m": load_1m(),
    }


class IsolatedError(RuntimeError):
    """A worker process failed or ran out of time; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def run_isolated(args: list[str], timeout: float | None = None) -> None:
    """Run `python -m benchmarks.run *args` in a fresh interpreter from the repo root.

    The worker's stderr (progress) goes to ours. Raises IsolatedError on a non-zero exit or a timeout
    (the worker and its children are killed).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.run", *args], cwd=ROOT, env=env, start_new_session=True
    )
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
        raise IsolatedError(f"timeout: killed after {timeout:.0f} s") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
        raise
    if code != 0:
        raise IsolatedError(f"worker exited with code {code}")


# ------------------------------------------------- per-method benchmarks run in a --quick / --full mode
def mode_parser(description: str):
    """The arguments every `{mode: result}` benchmark takes: `--quick` (default) / `--full`, `--threads`."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", const="quick", dest="mode")
    group.add_argument("--full", action="store_const", const="full", dest="mode")
    parser.add_argument("--threads", type=int, default=2)
    return parser


def mode_main(argv, description: str, run_benchmark, markdown, results_path) -> int:
    """`main` of a `{mode: result}` benchmark: parse `--quick/--full/--threads`, run, save, print the tables."""
    args = mode_parser(description).parse_args(argv)
    torch.set_num_threads(args.threads)
    mode = args.mode or "quick"
    result = run_benchmark(mode)
    save_mode_result(results_path, mode, result)
    print(markdown(result))
    return 0


def short_machine() -> dict:
    """CPUs, torch threads and the load at the end of a benchmark (goes into its result)."""
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_end": os.getloadavg()}


def save_mode_result(path, mode: str, result: dict, merge=None) -> None:
    """Store `result` under `mode` in the JSON file `path` (other modes kept, written atomically by
    `console.store_result`; `merge(old, new)` may combine it with the stored result of the same mode) and
    rewrite RESULTS.md from every result file."""
    import json
    from pathlib import Path

    from benchmarks.console import store_result
    from benchmarks.report import write_report

    path = Path(path)
    if merge is not None and path.exists():
        stored = json.loads(path.read_text())
        if mode in stored:
            result = merge(stored[mode], result)
    store_result(path, mode, result)
    write_report(path.parent, path.parent.parent / "RESULTS.md")
