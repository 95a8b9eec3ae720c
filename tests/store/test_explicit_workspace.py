"""The core never picks a workspace itself: only `store.default_workspace` opens the default one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tda_explorer.errors import ConfigError
from tda_explorer.evaluation.lds import load_lds_truth
from tda_explorer.maps import compute_map
from tda_explorer.store import Workspace, default_workspace, require_workspace

PACKAGE = Path(__file__).resolve().parents[2] / "tda_explorer"
PUBLIC_DEFAULTS = {"train_run", "import_run", "import_hf_run", "load_run", "compute_scores"}


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == name
    ]


def test_no_default_workspace_below_the_public_entry_points() -> None:
    bare, defaults = [], []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        rel = path.relative_to(PACKAGE).as_posix()
        bare += [f"{rel}:{c.lineno}" for c in _calls(tree, "Workspace") if not c.args and not c.keywords]
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and _calls(fn, "default_workspace"):
                defaults.append(fn.name)
    assert [b.split(":")[0] for b in bare] == ["store/workspace.py"], bare  # in default_workspace
    assert set(defaults) == PUBLIC_DEFAULTS, defaults


def test_core_functions_ask_for_the_workspace(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="load_lds_truth caches its results in a workspace"):
        load_lds_truth("0123456789abcdef")
    with pytest.raises(ConfigError, match="compute_map"):
        compute_map(None, None)  # type: ignore[arg-type]
    ws = Workspace(tmp_path)
    assert require_workspace(ws, "x") is ws and default_workspace(ws) is ws
