"""Two processes writing 1,000 flags each into one flags database at the same time lose none."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from tda_explorer.store import FlagStore

N_EACH = 1000


def _writer(path: str, run_key: str, start, n: int) -> None:
    fs = FlagStore(path)
    start.wait()
    for i in range(n):
        fs.flag(run_key, f"ex-{i}", suggested_label=i % 10, note=f"{run_key} wrote {i}")


@pytest.mark.slow
def test_two_processes_write_1000_flags_each_and_lose_none(tmp_path: Path) -> None:
    path = str(tmp_path / "flags.sqlite")
    FlagStore(path)  # schema and WAL mode exist before the writers race
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(path, key, start, N_EACH)) for key in ("A", "B")]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0, f"writer {p.name} failed (exit code {p.exitcode})"
    fs = FlagStore(path)
    for key in ("A", "B"):
        got = fs.get(key)
        assert len(got) == N_EACH
        assert all(got[f"ex-{i}"].note == f"{key} wrote {i}" for i in range(N_EACH))
        assert all(got[f"ex-{i}"].suggested_label == str(i % 10) for i in range(N_EACH))
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT COUNT(*) FROM flags WHERE flagged = 1").fetchone()[0] == 2 * N_EACH
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
