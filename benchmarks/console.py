"""What the per-method benchmarks share: timestamped log and progress lines on stderr, the `--quick|--full`
command line, the machine record and the per-mode results file."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def load_1m() -> float:
    """The 1-minute load average (NaN where the OS has none), rounded to 0.01."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return float("nan")


def log(msg: str) -> None:
    """`[HH:MM:SS load L] msg` on stderr."""
    print(f"[{time.strftime('%H:%M:%S')} load {load_1m():.1f}] {msg}", file=sys.stderr, flush=True)


def progress_line(desc: str):
    """A Progress callback `(done, total, msg)` that rewrites one stderr line, ending it when done."""

    def report(done: int, total: int, msg: str) -> None:
        print(f"\r  {desc}: {done}/{total} {msg[:70]:<70}", end="", file=sys.stderr, flush=True)
        if done >= total:
            print(file=sys.stderr)

    return report


def mode_parser(description: str, workers_help: str) -> argparse.ArgumentParser:
    """The command line every per-method benchmark starts from: `--quick` (the default) | `--full`, and
    `--workers` (default 2); `args.mode` is None when neither flag is given."""
    parser = argparse.ArgumentParser(description=description)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", dest="mode", const="quick", help="small (default)")
    group.add_argument("--full", action="store_const", dest="mode", const="full", help="the full comparison")
    parser.add_argument("--workers", type=int, default=2, help=f"{workers_help} (default 2)")
    return parser


def store_result(path: Path, mode: str, result: dict, keep: tuple[str, ...] = ()) -> None:
    """Write `result` as the `mode` entry of the JSON file `path` (atomically), leaving the other modes'
    entries alone (a quick run does not erase the full one); the keys `keep` of the entry it replaces are
    carried over when `result` has none (blocks written by another script)."""
    from tda_explorer.store.atomic import atomic_write_text

    stored = json.loads(path.read_text()) if path.exists() else {}
    old = stored.get(mode, {})
    stored[mode] = {**result, **{k: old[k] for k in keep if old.get(k) and not result.get(k)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(stored, indent=2, default=str) + "\n")


def t_interval(values) -> tuple[float, float, float]:
    """`(mean, low, high)` of a 95% Student-t interval of the mean (NaN bounds for a single value)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def run_meta(started: float, workers: int) -> dict:
    """When and where a benchmark run ended: workers, wall seconds since `started` (perf_counter), the load
    at the end, the date, versions and CPUs (the common part of a results file's "meta")."""
    import torch

    return {
        "workers": workers,
        "seconds": round(time.perf_counter() - started, 1),
        "load_1m_end": load_1m(),
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }


def machine_info(workers: int) -> dict:
    """Where a benchmark ran: CPUs, torch threads, worker processes, versions, load averages at the end."""
    import torch

    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "workers": workers,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "loadavg_end": os.getloadavg(),
    }
