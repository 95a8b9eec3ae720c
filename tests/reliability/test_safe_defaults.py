"""Safe defaults: the app binds to localhost, checkpoints never unpickle code, user files are never pickled."""

from __future__ import annotations

import pickle
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from tda_explorer.errors import ArtifactError
from tda_explorer.store import load_array, load_tensors, save_tensors

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    p
    for p in [
        *(REPO / "tda_explorer").rglob("*.py"),
        REPO / "app.py",
        REPO / "appkit.py",
        *(REPO / "pages").glob("*.py"),
    ]
    if p.is_file()
)


def test_app_binds_to_localhost_by_default() -> None:
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] in ("localhost", "127.0.0.1")
    assert config["browser"]["gatherUsageStats"] is False
    makefile = (REPO / "Makefile").read_text()
    for line in re.findall(r"streamlit run .*(?:\\\n.*)*", makefile):
        assert "--server.address localhost" in line or "--server.address 127.0.0.1" in line
    assert "0.0.0.0" not in makefile


def test_every_torch_load_is_weights_only() -> None:
    calls = []
    for path in SOURCES:
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start() : text.find(")", m.start()) + 1]
            calls.append(path.name)
            assert "weights_only=True" in call, f"{path}: {call}"
    assert calls, "expected the store to load tensors with torch.load"


def test_no_pickle_of_user_files() -> None:
    pattern = re.compile(
        r"pickle\.loads?\(|read_pickle\(|allow_pickle\s*=\s*True|joblib\.load\(|cloudpickle\.loads?\(|dill\.|shelve\."
    )
    offenders = [
        f"{p.relative_to(REPO)}:{text[: m.start()].count(chr(10)) + 1}"
        for p in SOURCES
        for text in [p.read_text()]
        for m in pattern.finditer(text)
    ]
    assert offenders == []


class _Evil:
    """Unpickling this would run `Path.touch(marker)`: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoint_is_refused_and_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "ckpt0.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Evil(marker)}, evil)
    with pytest.raises(ArtifactError, match="weights_only=True"):
        load_tensors(evil)
    assert not marker.exists()

    raw = tmp_path / "raw.pt"  # a plain pickle (not even a torch zip file)
    raw.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(ArtifactError):
        load_tensors(raw)
    assert not marker.exists()

    save_tensors(tmp_path, "good", {"w": torch.ones(3)})  # the legitimate file still loads
    assert torch.equal(load_tensors(tmp_path / "good.pt")["w"], torch.ones(3))


def test_pickled_numpy_array_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "scores.npy"
    np.save(path, np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ArtifactError, match="plain .npy"):
        load_array(path)
    assert not marker.exists()
