"""`load_run`: any stored run by its key — trained by the package (one or several stages) or imported."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tda_explorer.store import Workspace, default_workspace
from tda_explorer.training.imported import load_imported_run
from tda_explorer.training.runs import TrainedRun, load_native_run
from tda_explorer.training.stages import load_staged_run


def load_run(
    key: str,
    workspace: Workspace | None = None,
    *,
    model_factory: Callable[[], nn.Module] | None = None,
    train_fn: Callable | None = None,
) -> TrainedRun:
    """A TrainedRun from its run key (as printed by the CLI and listed by `Workspace.list_runs()`).

    Args:
        model_factory, train_fn: for an imported run whose factory / training loop was defined in a script
            or notebook (not importable), the same callables again; ignored for other runs.
    """
    ws = default_workspace(workspace)
    meta = ws.meta("runs", key)
    cfg = (
        meta.get("config") if isinstance(meta.get("config"), dict) else {}
    )  # load_native_run says what's wrong
    if "imported" in cfg:
        return load_imported_run(key, meta, ws, model_factory, train_fn)
    if "stages" in cfg:
        return load_staged_run(key, ws)
    return load_native_run(key, ws)
