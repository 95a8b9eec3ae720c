"""Tensor and array files: round trips, weights_only loading, no pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tda_explorer.errors import ArtifactError
from tda_explorer.store import Workspace, load_array, load_tensors, save_array, save_tensors


class _Payload:
    """Something a malicious or careless pickle could carry."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_tensors_round_trip_in_an_artifact(ws: Workspace) -> None:
    big = torch.arange(10_000, dtype=torch.float64)
    tensors = {
        "w": torch.randn(3, 4, dtype=torch.float64, requires_grad=True),
        "idx": torch.tensor([3, 1, 2]),
        "mask": torch.tensor([True, False]),
        "view": big[:5],
        "t": torch.randn(4, 3).T,
    }
    with ws.write("runs", {"a": 1}) as d:
        path = ws.save_tensors(d, "seed0", tensors)
        assert path.name == "seed0.pt"
    loaded = load_tensors(ws.open("runs", {"a": 1}) / "seed0.pt")
    assert set(loaded) == set(tensors)
    for k, t in tensors.items():
        assert loaded[k].dtype == t.dtype and torch.equal(loaded[k], t.detach())
        assert loaded[k].device.type == "cpu" and not loaded[k].requires_grad
    # the view was saved alone, not with its 10 000-element storage
    assert (ws.open("runs", {"a": 1}) / "seed0.pt").stat().st_size < 8 * 10_000 // 2
    mm = load_tensors(ws.open("runs", {"a": 1}) / "seed0.pt", mmap=True)
    assert torch.equal(mm["idx"], tensors["idx"])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_tensors_never_unpickles_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"w": torch.zeros(2), "evil": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ArtifactError, match="weights_only"):
        load_tensors(tmp_path / "evil.pt")
    assert "unpickled!" not in capsys.readouterr().out
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ArtifactError):
        load_tensors(tmp_path / "raw.pt")
    assert "unpickled!" not in capsys.readouterr().out
    torch.save({"w": torch.zeros(2), "n": 3}, tmp_path / "mixed.pt")  # allowed by torch, not by us
    with pytest.raises(ArtifactError, match="dict of named tensors"):
        load_tensors(tmp_path / "mixed.pt")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_tensors(tmp_path / "missing.pt")
    with pytest.raises(ArtifactError, match="only str -> Tensor"):
        save_tensors(tmp_path, "bad", {"n": 3})


def test_arrays_round_trip_and_mmap(tmp_path: Path) -> None:
    scores = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    path = save_array(tmp_path, "scores", scores)
    assert path.name == "scores.npy"
    assert np.array_equal(load_array(path), scores)
    mm = load_array(path, mmap_mode="r")
    assert isinstance(mm, np.memmap) and np.array_equal(mm[1:3], scores[1:3])
    ids = np.array(["ex-1", "ex-22"])
    assert np.array_equal(load_array(save_array(tmp_path, "ids.npy", ids)), ids)


def test_arrays_refuse_pickles(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="object arrays"):
        save_array(tmp_path, "obj", np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ArtifactError, match="plain .npy"):
        load_array(tmp_path / "obj.npy")
    with pytest.raises(ArtifactError, match="does not exist"):
        load_array(tmp_path / "nope.npy")
