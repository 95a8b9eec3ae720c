"""The house's import rules, checked on the source (AST, deferred imports inside functions included):
no cycles between modules or between subpackages; `viz` draws (imports nothing from attributors,
training, store, evaluation); `backend` is math (nothing from training or store); nothing in the core
imports streamlit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tda_explorer"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every module of the package that `path` imports, anywhere in the file (top level or deferred)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def external_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (c := visit(n)):
            return c
    return None


def subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_module_cycles():
    g = graph()
    # a package's __init__ re-exporting its modules is not a cycle of the code itself
    edges = {
        m: {
            t
            for t in ts
            if not (t.endswith("__init__") or m.startswith(t + ".") and t == m.rpartition(".")[0])
        }
        for m, ts in g.items()
    }
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges))}"


def test_no_package_cycles():
    edges: dict[str, set[str]] = {}
    for m, ts in graph().items():
        a = subpackage(m)
        edges.setdefault(a, set()).update(b for t in ts if (b := subpackage(t)) and b != a and a)
    assert find_cycle(edges) is None, f"subpackage cycle: {' -> '.join(find_cycle(edges))}"


@pytest.mark.parametrize(
    "layer, forbidden",
    [("viz", {"attributors", "training", "store", "evaluation"}), ("backend", {"training", "store"})],
)
def test_layers(layer, forbidden):
    bad = {
        m: sorted(subpackage(t) for t in ts if subpackage(t) in forbidden)
        for m, ts in graph().items()
        if subpackage(m) == layer
    }
    bad = {m: v for m, v in bad.items() if v}
    assert not bad, f"{layer} must not import {sorted(forbidden)}: {bad}"


def test_core_never_imports_streamlit():
    users = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "streamlit" in external_imports(p)]
    assert not users, f"the compute core imports streamlit in {users}"


def test_the_checker_sees_cycles_and_deferred_imports(tmp_path):
    """The rules above can fail: a deferred import closing a cycle is found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    src = tmp_path / "tda_explorer" / "x.py"
    src.parent.mkdir()
    src.write_text("def f():\n    from tda_explorer.y import g\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "tda_explorer"
    try:
        assert imports_of(src, {"tda_explorer.x", "tda_explorer.y"}) == {"tda_explorer.y"}
    finally:
        PACKAGE = saved
