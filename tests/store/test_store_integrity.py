"""Artifact checksums: recorded at write, verified on load; damage of any artifact kind -> ArtifactError."""

from __future__ import annotations

import hashlib
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tda_explorer.errors import ArtifactError
from tda_explorer.store import (
    META_FILE,
    Workspace,
    integrity,
    load_array,
    load_tensors,
    save_array,
    save_tensors,
)

CFG = {"what": "integrity", "n": 3}


def _flip(path: Path, offset_from_end: int = 9) -> None:
    """Flip the bits of one byte near the end of `path` (in the payload, past any header)."""
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def _write_all_kinds(ws: Workspace) -> dict[str, Path]:
    """One artifact of each kind the package writes: checkpoints, scores, features (+ their metas)."""
    out = {}
    with ws.write("models", CFG, extra={"checkpoints": []}) as d:
        save_tensors(d, "ckpt0", {"w": torch.arange(64, dtype=torch.float32).view(8, 8), "b": torch.ones(8)})
    out["ckpt"] = ws.path("models", ws.key("models", CFG)) / "ckpt0.pt"
    with ws.write("scores", CFG) as d:
        save_array(d, "scores", np.arange(60, dtype=np.float32).reshape(6, 10))
    out["scores"] = ws.path("scores", ws.key("scores", CFG)) / "scores.npy"
    with ws.write("features", CFG) as d:
        save_array(d, "features", np.linspace(0, 1, 80, dtype=np.float32).reshape(10, 8))
    out["features"] = ws.path("features", ws.key("features", CFG)) / "features.npy"
    return out


def _load(path: Path, mmap: bool = False):
    if path.suffix == ".pt":
        return load_tensors(path, mmap=mmap)
    return load_array(path, mmap_mode="r" if mmap else None)


def test_meta_records_a_sha256_of_every_file_and_of_itself(ws: Workspace) -> None:
    with ws.write("runs", CFG) as d:
        save_array(d, "a", np.zeros(3))
        (d / "sub").mkdir()
        (d / "sub" / "note.txt").write_text("hi")
    meta = ws.meta("runs", ws.key("runs", CFG))
    digests = meta["checksums"]["sha256"]
    assert sorted(digests) == ["a.npy", "sub/note.txt"]
    assert all(len(h) == 64 for h in digests.values())
    assert meta["meta_sha256"] == integrity.meta_digest(meta)
    assert ws.verify("runs", ws.key("runs", CFG)) == 2


@pytest.mark.parametrize("kind", ["ckpt", "scores", "features"])
@pytest.mark.parametrize("mmap", [False, True])
def test_flipped_bytes_in_any_artifact_file_raise_artifact_error(
    ws: Workspace, kind: str, mmap: bool
) -> None:
    path = _write_all_kinds(ws)[kind]
    _load(path, mmap)  # intact: loads
    _flip(path)
    with pytest.raises(ArtifactError) as info:
        _load(path, mmap)
    msg = str(info.value)
    assert path.name in msg and str(path.parent) in msg and "checksum" in msg and "Delete the folder" in msg


def test_damage_is_seen_in_the_process_that_cached_the_digest_and_in_a_fresh_one(ws: Workspace) -> None:
    path = _write_all_kinds(ws)["scores"]
    load_array(path)
    integrity._cache.clear()  # a fresh process: nothing cached
    assert integrity.verify_file(path) is True
    _flip(path)  # changes size-or-times, so the cached digest is not reused
    with pytest.raises(ArtifactError, match="checksum"):
        load_array(path)
    with pytest.raises(ArtifactError, match="scores"):
        ws.verify("scores", ws.key("scores", CFG))


def test_recompute_hint_names_the_step(ws: Workspace) -> None:
    paths = _write_all_kinds(ws)
    _flip(paths["ckpt"])
    with pytest.raises(ArtifactError, match="tda-explorer train"):
        load_tensors(paths["ckpt"])
    _flip(paths["scores"])
    with pytest.raises(ArtifactError, match="tda-explorer attribute"):
        load_array(paths["scores"])


@pytest.mark.parametrize("edit", ["value", "byte", "truncate", "not_json_object"])
def test_damaged_meta_json_raises_artifact_error(ws: Workspace, edit: str) -> None:
    path = _write_all_kinds(ws)["scores"]
    meta_file = path.parent / META_FILE
    if edit == "value":  # still valid JSON, different content: caught by meta_sha256
        meta_file.write_text(meta_file.read_text().replace('"n": 3', '"n": 4'))
    elif edit == "byte":
        _flip(meta_file, offset_from_end=len(meta_file.read_bytes()) // 2)
    elif edit == "truncate":
        meta_file.write_bytes(meta_file.read_bytes()[:40])
    else:
        meta_file.write_text("[1, 2]")
    key = path.parent.name
    with pytest.raises(ArtifactError) as info:
        ws.meta("scores", key)
    assert "meta.json" in str(info.value) and "Delete the folder" in str(info.value)
    with pytest.raises(ArtifactError):
        ws.open("scores", CFG)
    with pytest.raises(ArtifactError):
        load_array(path)  # the file's check reads the meta too
    metas, broken = ws.scan("scores")
    assert metas == [] and broken[0][0] == key


def test_artifacts_written_before_checksums_load_unverified(ws: Workspace) -> None:
    paths = _write_all_kinds(ws)
    for path in paths.values():
        meta_file = path.parent / META_FILE
        meta = json.loads(meta_file.read_text())
        del meta["checksums"], meta["meta_sha256"]
        meta_file.write_text(json.dumps(meta))
        integrity._cache.clear()
        assert integrity.verify_file(path) is False
        _load(path)
        _load(path, mmap=True)
    assert ws.verify("scores", ws.key("scores", CFG)) == 0
    assert ws.open("scores", CFG).is_dir()


def test_files_outside_artifacts_load_unverified(tmp_path: Path) -> None:
    save_array(tmp_path, "loose", np.arange(4))
    (tmp_path / META_FILE).write_text('{"not": "an artifact meta"}')
    assert integrity.verify_file(tmp_path / "loose.npy") is False
    assert load_array(tmp_path / "loose.npy").tolist() == [0, 1, 2, 3]


def test_missing_listed_file_fails_verify(ws: Workspace) -> None:
    path = _write_all_kinds(ws)["scores"]
    os.unlink(path)
    with pytest.raises(ArtifactError, match="missing"):
        ws.verify("scores", ws.key("scores", CFG))


def test_digest_cached_once_per_file_version(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_all_kinds(ws)["scores"]
    calls = []
    real = hashlib.sha256
    counting = types.SimpleNamespace(sha256=lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(integrity, "hashlib", counting)  # only the integrity module's hashing
    for _ in range(5):
        load_array(path, mmap_mode="r")
        ws.open("scores", CFG)
    assert len(calls) <= 1  # the file was hashed at write time; the meta's digest is checked once at most


def test_meta_whose_extra_is_not_a_mapping_is_refused(ws: Workspace) -> None:
    path = _write_all_kinds(ws)["scores"]
    meta_file = path.parent / META_FILE
    meta = json.loads(meta_file.read_text())
    meta["extra"] = ["not", "a", "dict"]
    meta["meta_sha256"] = integrity.meta_digest(meta)  # consistent, so only the shape check objects
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="not a mapping"):
        ws.open("scores", CFG)
