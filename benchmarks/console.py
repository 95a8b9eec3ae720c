"""Console output shared by the per-method benchmarks: timestamped log lines and progress lines on stderr."""

from __future__ import annotations

import os
import sys
import time


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
