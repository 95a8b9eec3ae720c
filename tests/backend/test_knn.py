"""FAISS top-k: exact search equals brute force; approximate indexes report their recall against exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tda_explorer.backend.knn import INDEX_KINDS, FaissTopK, faiss_topk, recall_at_k
from tda_explorer.errors import ConfigError, NotFittedError

pytest.importorskip("faiss")


def _features(n: int, d: int, seed: int) -> np.ndarray:
    """Continuous random features (no exact ties between inner products)."""
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, d)) * 4
    return (centers[rng.integers(0, 20, n)] + rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.parametrize("largest", [True, False])
def test_exact_topk_equals_brute_force(largest: bool) -> None:
    train, query = _features(3000, 48, 0), _features(40, 48, 1)
    top = FaissTopK("flat").fit(train).search(query, k=15, largest=largest)
    brute = torch.from_numpy(query.astype(np.float64) @ train.T.astype(np.float64)).topk(
        15, dim=1, largest=largest
    )
    assert top.values.shape == (40, 15) and top.indices.dtype == torch.int64
    assert torch.equal(top.indices, brute.indices)
    assert torch.allclose(top.values.double(), brute.values, rtol=1e-5, atol=1e-4)


def test_cosine_and_memmap_input(tmp_path: Path) -> None:
    train, query = (
        _features(500, 16, 2) * np.linspace(0.1, 10, 500)[:, None].astype(np.float32),
        _features(5, 16, 3),
    )
    np.save(tmp_path / "train.npy", train)
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    top = FaissTopK("flat", normalize=True).fit(mapped).search(query, k=5)
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    assert torch.equal(top.indices, torch.from_numpy(q @ unit.T).topk(5, dim=1).indices)


def test_approximate_indexes_measure_recall_against_exact() -> None:
    train, query = _clustered(4000, 32, 4), _clustered(50, 32, 5)
    cosine = FaissTopK("hnsw", ef_search=128, normalize=True).fit(train)
    assert cosine.recall(query, train, k=10) > 0.95
    inner = FaissTopK("hnsw", ef_search=256).fit(train)  # raw inner product (MIPS) needs a wider search
    assert inner.recall(query, train, k=10) > 0.85
    ivf = FaissTopK("ivf", nlist=16, nprobe=4, seed=0).fit(train)
    r = ivf.recall(query, train, k=10)
    assert 0.5 < r <= 1.0
    full = FaissTopK("ivf", nlist=16, nprobe=16, seed=0).fit(train)  # every cell probed = exact
    assert full.recall(query, train, k=10) == 1.0


def test_recall_at_k_and_errors() -> None:
    exact = np.array([[0, 1, 2], [3, 4, 5]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[2, 1, 9], [-1, -1, 3]]), exact) == pytest.approx((2 / 3 + 1 / 3) / 2)
    with pytest.raises(ConfigError):
        recall_at_k(exact[:, :2], exact)
    with pytest.raises(NotFittedError):
        FaissTopK().search(_features(2, 4, 0), k=1)
    with pytest.raises(ConfigError, match="not one of"):
        FaissTopK("lsh")
    index = FaissTopK().fit(_features(10, 4, 0))
    with pytest.raises(ConfigError, match="queries must be"):
        index.search(_features(2, 5, 0), k=1)
    assert index.search(_features(2, 4, 0), k=50).indices.shape == (2, 10)  # k clamps to n_train
    assert set(INDEX_KINDS) == {"flat", "hnsw", "ivf"}
    assert faiss_topk(_features(3, 4, 1), _features(10, 4, 0), 2).values.shape == (3, 2)
