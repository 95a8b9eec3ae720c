"""An unexpected error (or Ctrl-C) during a command starts its traceback on its own line, not on the
progress bar's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from tda_explorer import cli

def boom(args):
    update, bar = cli._progress_bar("work")
    update(3, 10, "halfway")
    raise RuntimeError("a bug")

parser = cli.build_parser()
parser.set_defaults(func=boom)
args = parser.parse_args(["runs"])
args.func = boom
cli.build_parser = lambda: type("P", (), {"parse_args": staticmethod(lambda argv: args)})()
cli.main([])
"""


def test_traceback_does_not_start_on_the_progress_bar_line():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0 and "RuntimeError: a bug" in out.stderr
    line = next(ln for ln in out.stderr.replace("\r", "\n").splitlines() if "Traceback" in ln)
    assert line.startswith("Traceback"), out.stderr
