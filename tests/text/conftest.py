"""Fixtures for the text tests: a tiny SST-2 split, and every workspace (frozen-state cache included)
under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tda_explorer.data import DatasetSpec, load_dataset
from tda_explorer.models import text_cache

SST2_PATH = Path(__file__).resolve().parents[3] / "shared" / "data" / "sst2"
TINY_SST2 = {"n_train": 48, "n_val": 8, "n_test": 12}


@pytest.fixture(autouse=True)
def _workspace_in_tmp(tmp_path, monkeypatch):
    """`Workspace()` (where frozen text states are cached) points into tmp_path; memory cache cleared.

    Torch runs single-threaded here: on a busy 2-core machine a multi-threaded eigh or matmul waits
    on its own spinning threads and can take 10x longer than one thread.
    """
    monkeypatch.setenv("TDA_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    text_cache.clear_memory()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    text_cache.clear_memory()


@pytest.fixture(scope="session")
def tiny_sst2():
    """SST-2 with 48 train / 8 val / 12 test sentences (skips when the shared copy is absent)."""
    if not (SST2_PATH / "train.tsv").is_file():
        pytest.skip(f"SST-2 not found at {SST2_PATH}")
    return load_dataset(DatasetSpec("sst2", options=TINY_SST2))
