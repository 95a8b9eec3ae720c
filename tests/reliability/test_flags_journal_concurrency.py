"""2 processes x 4 threads flag, re-flag and unflag the same examples at once: nothing is lost, and the
journal replays to exactly the database's state (its lines are in commit order), so a damaged file
written under contention is recovered whole."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tda_explorer.store import FlagStore
from tda_explorer.store.flags import FlagsRecoveredWarning
from tests.fixtures import run_together

N_OPS = 60
THREADS = 4


def _thread(fs: FlagStore, proc: str, t: int) -> None:
    for i in range(N_OPS):
        shared = f"shared-{i % 7}"  # every writer fights over these rows
        fs.flag("run", shared, suggested_label=f"{proc}{t}", note=f"{proc}{t} op {i}")
        fs.flag("run", f"{proc}-{t}-{i}", suggested_label=i % 3, note="own")
        if i % 5 == 0:
            fs.unflag("run", shared)


def _process(path: str, proc: str, start) -> None:
    fs = FlagStore(path)
    start.wait()
    threads = [threading.Thread(target=_thread, args=(fs, proc, t)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def test_concurrent_writers_journal_replays_to_the_same_state(tmp_path: Path) -> None:
    path = tmp_path / "flags.sqlite"
    FlagStore(path)
    run_together(_process, [(str(path), p) for p in ("P", "Q")], timeout=300)
    fs = FlagStore(path)
    state = fs.get("run", include_unflagged=True)
    own = [k for k in state if not k.startswith("shared-")]
    assert len(own) == 2 * THREADS * N_OPS and all(state[k].note == "own" for k in own)
    assert {k for k in state if k.startswith("shared-")} == {f"shared-{i}" for i in range(7)}

    path.write_bytes(b"")  # the worst damage: the whole file gone to zero bytes
    with pytest.warns(FlagsRecoveredWarning):
        assert FlagStore(path).get("run", include_unflagged=True) == state
