"""Memory-bounded top-k over memory-mapped features: equals brute force for every chunking, reads in chunks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tda_explorer.backend.bounded import NpyWriter, iter_row_chunks, topk_scores
from tda_explorer.backend.scoring import streaming_topk
from tda_explorer.errors import ConfigError


def _save(tmp_path: Path, name: str, arr: np.ndarray) -> np.ndarray:
    np.save(tmp_path / name, arr)
    return np.load(tmp_path / name, mmap_mode="r")


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("chunks", [(1000, 64), (97, 7), (5000, 1)])
def test_topk_equals_brute_force_for_any_chunking(tmp_path: Path, largest: bool, chunks) -> None:
    rng = np.random.default_rng(0)
    train = _save(tmp_path, "train.npy", rng.standard_normal((1000, 24)).astype(np.float32))
    query = rng.standard_normal((64, 24)).astype(np.float32)
    top = topk_scores(query, train, 12, largest, train_chunk=chunks[0], query_chunk=chunks[1], device="cpu")
    brute = torch.from_numpy(query.astype(np.float64) @ np.asarray(train, np.float64).T).topk(12, 1, largest)
    assert torch.equal(top.indices, brute.indices)
    assert torch.allclose(top.values.double(), brute.values, atol=1e-4)
    same = streaming_topk(torch.from_numpy(query), torch.from_numpy(np.array(train)), 12, largest)
    assert torch.equal(top.indices, same.indices)


def test_k_larger_than_train_and_bad_arguments(tmp_path: Path) -> None:
    train = np.eye(3, dtype=np.float32)
    top = topk_scores(np.eye(3, dtype=np.float32), train, 10, train_chunk=2, device="cpu")
    assert top.indices.shape == (3, 3) and torch.equal(top.indices[:, 0], torch.arange(3))
    with pytest.raises(ConfigError, match="same width"):
        topk_scores(np.zeros((2, 4), np.float32), train, 1)
    with pytest.raises(ConfigError, match="positive int"):
        topk_scores(train, train, 0)


def test_npy_writer_round_trip_and_row_count(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.float32).reshape(20, 3)
    with NpyWriter(tmp_path / "f.npy", (20, 3)) as w:
        for s in range(0, 20, 7):
            w.write(data[s : s + 7])
    assert np.array_equal(np.load(tmp_path / "f.npy", mmap_mode="r"), data)
    with pytest.raises(ConfigError, match="expected 20"), NpyWriter(tmp_path / "g.npy", (20, 3)) as w:
        w.write(data[:5])
    with pytest.raises(ConfigError, match="got rows"), NpyWriter(tmp_path / "h.npy", (20, 3)) as w:
        w.write(np.zeros((5, 4)))


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_reading_a_memmap_in_chunks_keeps_the_resident_set_small(tmp_path: Path) -> None:
    n, d = 16384, 1024  # 64 MiB on disk
    with NpyWriter(tmp_path / "big.npy", (n, d)) as w:
        for s in range(0, n, 2048):
            w.write(np.full((2048, d), s, dtype=np.float32))
    mapped = np.load(tmp_path / "big.npy", mmap_mode="r")
    before = _rss_file_kib()
    peak = before
    total = 0.0
    for _, rows in iter_row_chunks(mapped, 1024):  # 4 MiB per chunk
        total += float(rows[0, 0])
        peak = max(peak, _rss_file_kib())
    assert total == sum(float(s) for s in range(0, n, 2048) for _ in range(2))
    assert peak - before < 16 * 1024, f"mapped pages piled up: {peak - before} KiB resident"
