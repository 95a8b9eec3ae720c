"""A writer killed with SIGKILL never leaves a partial artifact; the next open cleans up.

Each test runs a real child process (`python -c`) that writes an artifact and is killed mid-way,
either by the test (while the child sleeps inside the `with` block) or by itself at a chosen step
of the final rename, so every stage of the commit is covered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tda_explorer.store import META_FILE, Workspace

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

CFG = {"model": "mlp", "lr": 0.1}
Spawn = Callable[..., subprocess.Popen[str]]

WRITER = """
import os, signal, sys, time
from tda_explorer.store import Workspace, atomic
root, mode = sys.argv[1], sys.argv[2]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "after_trash":          # old renamed to .trash-, new not yet in place
    atomic._exchange = lambda a, b: False
    real_rename = os.rename
    def rename(src, dst):
        real_rename(src, dst)
        if os.path.basename(dst).startswith(".trash-"):
            die()
    atomic.os.rename = rename
elif mode == "after_swap":         # new in place, old not yet deleted
    atomic.shutil.rmtree = die

ws = Workspace(root)
with ws.write("runs", {"model": "mlp", "lr": 0.1}, extra={"v": "new"}) as d:
    (d / "part1.bin").write_bytes(os.urandom(1 << 16))
    if mode == "sleep":
        print("WRITING", d, flush=True)
        time.sleep(60)
"""


def _write_old(ws: Workspace) -> Path:
    with ws.write("runs", CFG, extra={"v": "old"}) as d:
        (d / "old.bin").write_bytes(b"old")
    return ws.path("runs", ws.key("runs", CFG))


def _assert_complete(ws: Workspace, version: str) -> None:
    d = ws.open("runs", CFG)
    assert ws.meta("runs", d.name)["extra"] == {"v": version}
    files = {p.name for p in d.iterdir()}
    assert files == ({"old.bin", META_FILE} if version == "old" else {"part1.bin", META_FILE})


def _hidden(ws: Workspace) -> list[str]:
    return sorted(p.name for p in (ws.root / "runs").iterdir() if p.name.startswith("."))


def _kill_while_sleeping(ws: Workspace, spawn_python: Spawn) -> None:
    proc = spawn_python(WRITER, str(ws.root), "sleep")
    try:
        line = proc.stdout.readline()
        assert line.startswith("WRITING"), proc.stderr.read()
        tmp = Path(line.split(" ", 1)[1].strip())
        assert (tmp / "part1.bin").is_file() and tmp.name.startswith(".tmp-")
        assert Workspace(ws.root).root == ws.root  # opening meanwhile must not delete a live write
        assert tmp.is_dir()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("with_old", [True, False])
def test_sigkill_inside_the_block(ws: Workspace, spawn_python: Spawn, with_old: bool) -> None:
    if with_old:
        _write_old(ws)
    _kill_while_sleeping(ws, spawn_python)
    if with_old:
        _assert_complete(ws, "old")
        assert [m["extra"] for m in ws.list_runs()] == [{"v": "old"}]
    else:
        assert not ws.exists("runs", CFG) and ws.list_runs() == []
    assert _hidden(ws), "the killed writer should have left its temp dir behind"
    Workspace(ws.root)  # the next open cleans the leftovers of the dead writer at once
    assert _hidden(ws) == []
    if with_old:
        _assert_complete(ws, "old")


def test_sigkill_between_the_two_renames_restores_old(ws: Workspace, spawn_python: Spawn) -> None:
    _write_old(ws)
    proc = spawn_python(WRITER, str(ws.root), "after_trash")
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert any(n.startswith(".trash-") for n in _hidden(ws))
    assert not ws.exists("runs", CFG)  # never partial: for an instant, not there at all
    Workspace(ws.root)  # recovery puts the complete old version back
    _assert_complete(ws, "old")
    assert _hidden(ws) == []


def test_sigkill_after_the_swap_keeps_new(ws: Workspace, spawn_python: Spawn) -> None:
    _write_old(ws)
    proc = spawn_python(WRITER, str(ws.root), "after_swap")
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    _assert_complete(ws, "new")
    Workspace(ws.root)
    _assert_complete(ws, "new")
    assert _hidden(ws) == []
