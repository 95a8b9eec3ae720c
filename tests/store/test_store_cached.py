"""Workspace.cached and the registry of artifact kinds: compute once, reload, refuse damage clearly."""

from __future__ import annotations

import numpy as np
import pytest

from tda_explorer.errors import ArtifactError, ConfigError
from tda_explorer.store import ArtifactKind, Workspace, artifact_kind, load_array, register_kind, save_array
from tda_explorer.store.integrity import how_to_recompute

CFG = {"what": "squares", "n": 4}


def _save(d, arr) -> None:
    save_array(d, "values", arr)


def _load(path, meta) -> tuple[np.ndarray, dict]:
    return load_array(path / "values.npy"), meta["extra"]


@pytest.fixture
def kind() -> ArtifactKind:
    return register_kind(
        ArtifactKind("test_squares", files=("values.npy",), save=_save, load=_load, recompute="square again")
    )


def test_cached_computes_once_then_reloads(ws: Workspace, kind: ArtifactKind) -> None:
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.arange(4.0) ** 2

    first, extra = ws.cached(kind.name, CFG, compute, extra=lambda arr: {"total": float(arr.sum())})
    again, _ = ws.cached(kind.name, CFG, compute)
    assert calls == [1] and extra == {"total": 14.0}
    np.testing.assert_array_equal(first, [0.0, 1.0, 4.0, 9.0])
    np.testing.assert_array_equal(again, first)
    # another process (a fresh Workspace object on the same root) reuses it too
    np.testing.assert_array_equal(Workspace(ws.root).cached(kind.name, CFG, compute)[0], first)
    assert calls == [1]
    other, _ = ws.cached(kind.name, {**CFG, "n": 5}, lambda: np.arange(5.0))
    assert len(other) == 5 and len(ws.list(kind.name)) == 2


def test_failed_compute_writes_nothing(ws: Workspace, kind: ArtifactKind) -> None:
    def boom() -> np.ndarray:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        ws.cached(kind.name, CFG, boom)
    assert not ws.exists(kind.name, CFG)


def test_damaged_artifact_raises_a_clear_error_then_recomputes(ws: Workspace, kind: ArtifactKind) -> None:
    ws.cached(kind.name, CFG, lambda: np.arange(4.0))
    folder = ws.path(kind.name, ws.key(kind.name, CFG))
    (folder / "values.npy").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="Delete the folder .* and square again"):
        ws.cached(kind.name, CFG, lambda: np.arange(4.0))
    (folder / "values.npy").unlink()  # a registered file missing is damage too, not a silent recompute
    with pytest.raises(ArtifactError, match="lacks values.npy"):
        ws.cached(kind.name, CFG, lambda: np.arange(4.0))
    ws.delete(kind.name, ws.key(kind.name, CFG))  # the fix the message gives
    np.testing.assert_array_equal(ws.cached(kind.name, CFG, lambda: np.ones(2))[0], [1.0, 1.0])


def test_unregistered_kind_needs_save_and_load(ws: Workspace) -> None:
    with pytest.raises(ConfigError, match="no save/load"):
        ws.cached("test_unknown", CFG, lambda: 1)
    assert ws.cached("test_unknown", CFG, lambda: np.zeros(1), save=_save, load=_load)[0].shape == (1,)


def test_registry_names_the_recompute_step() -> None:
    assert "tda-explorer train" in artifact_kind("runs").recompute
    assert artifact_kind("never_registered").files == ()
    assert "Attribution page" in how_to_recompute("/ws/scores/0123456789abcdef")
