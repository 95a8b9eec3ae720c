"""Top-k over stored features with FAISS: exact inner product by default, approximate indexes as an option.

`scores[q, t] = <query[q], train[t]>` as in `backend.scoring` (rows = queries); for AirRep embeddings,
projected gradients (TRAK / Grad-Dot features) or representations, the largest inner products are the
strongest proponents. Cosine similarity = inner product of unit rows (`normalize=True`).

Index kinds (`FaissTopK(kind=...)`):
- "flat": `IndexFlatIP`, exact brute force (default). Holds the training features in RAM
  (`4 * n_train * d` bytes); for features larger than RAM use `backend.bounded.topk_scores`.
- "hnsw": `IndexHNSWFlat` (inner-product metric), a graph index: sub-linear search, approximate; its
  build is multi-threaded and may differ slightly from run to run.
- "ivf": `IndexIVFFlat` with `nlist` k-means cells (trained on a seeded sample) of which `nprobe` are
  searched; approximate; `nprobe = nlist` is exact.
How approximate: `recall_at_k(approx, exact)` (the fraction of the exact top-k that the index finds);
`FaissTopK.recall(...)` measures it against "flat" on given queries.

GPU: with the `faiss-gpu` wheels (pinned `faiss-cpu` replaced by e.g. `faiss-gpu-cu12` of the same
version) and a visible CUDA device, "flat" and "ivf" indexes are moved to all GPUs
(`faiss.index_cpu_to_all_gpus`); "hnsw" has no GPU version and stays on the CPU. Not tested here (no GPU).
`largest=False` searches the smallest inner products (opponents) by negating the queries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tda_explorer.backend.bounded import ArrayLike, iter_row_chunks
from tda_explorer.backend.scoring import TopK
from tda_explorer.errors import ConfigError, NotFittedError

INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf")
ADD_CHUNK = 65536


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is in requirements.txt
        raise ConfigError(
            "k-NN search needs the 'faiss-cpu' package; run `pip install -r requirements.txt`."
        ) from e
    return faiss


def _rows(x: ArrayLike, normalize: bool) -> np.ndarray:
    """`x` as a C-contiguous float32 numpy array (unit rows when `normalize`)."""
    arr = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        arr = arr / np.where(norms > 0, norms, 1.0)
    return arr


def gpu_available() -> bool:
    """True when FAISS was built with GPU support and sees at least one CUDA device."""
    faiss = _faiss()
    return hasattr(faiss, "index_cpu_to_all_gpus") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0


class FaissTopK:
    """Top-k inner-product search over training features with a FAISS index (see module docstring).

    Args:
        kind: "flat" (exact, default), "hnsw" or "ivf" (approximate).
        normalize: unit-normalise rows first (cosine similarity instead of the raw inner product).
        nlist: IVF cells (default `min(4 * sqrt(n_train), n_train / 39)`, at least 1).
        nprobe: IVF cells searched per query.
        hnsw_m: HNSW graph degree.
        ef_construction, ef_search: HNSW build / search breadth (larger = better recall, slower).
        seed: seed of the IVF training sample and k-means.
        use_gpu: move the index to the GPUs; None = when `gpu_available()` (never for "hnsw").

    Example:
        >>> index = FaissTopK("flat").fit(np.load(path, mmap_mode="r"))  # doctest: +SKIP
        >>> top = index.search(query_features, k=10)  # values/indices [n_query, 10], best first
    """

    def __init__(
        self,
        kind: str = "flat",
        normalize: bool = False,
        nlist: int | None = None,
        nprobe: int = 16,
        hnsw_m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 128,
        seed: int = 0,
        use_gpu: bool | None = None,
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ConfigError(f"index kind {kind!r} is not one of {INDEX_KINDS}.")
        for name, v in (("nprobe", nprobe), ("hnsw_m", hnsw_m), ("ef_search", ef_search)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive int, got {v!r}.")
        if nlist is not None and (not isinstance(nlist, int) or nlist < 1):
            raise ConfigError(f"nlist must be a positive int or None, got {nlist!r}.")
        self.kind, self.normalize, self.nlist, self.nprobe = kind, normalize, nlist, nprobe
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.seed, self.use_gpu = seed, use_gpu

    def _build(self, d: int, train: ArrayLike) -> Any:
        faiss = _faiss()
        n = len(train)
        if self.kind == "flat":
            return faiss.IndexFlatIP(d)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            return index
        nlist = self.nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))  # k-means wants >= 39 / cell
        if nlist > n:
            raise ConfigError(f"nlist={nlist} is larger than the {n} training rows; lower nlist.")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(self.seed)
        sample = np.sort(np.random.default_rng(self.seed).permutation(n)[: min(n, 256 * nlist)])
        index.train(
            _rows(train[sample] if not isinstance(train, torch.Tensor) else train[sample], self.normalize)
        )
        return index

    def fit(self, train: ArrayLike) -> FaissTopK:
        """Index the training features `[n_train, d]` (array, memmap or tensor), added in chunks."""
        if train.ndim != 2 or len(train) == 0:
            raise ConfigError(
                f"training features must be a non-empty [n, d] matrix, got {tuple(train.shape)}."
            )
        faiss = _faiss()
        index = self._build(int(train.shape[1]), train)
        for _, rows in iter_row_chunks(train, ADD_CHUNK):
            index.add(_rows(rows, self.normalize))
        gpu = gpu_available() if self.use_gpu is None else self.use_gpu
        if gpu and self.kind != "hnsw":
            index = faiss.index_cpu_to_all_gpus(index)
        self.index_, self.n_train_, self.dim_ = index, int(train.shape[0]), int(train.shape[1])
        return self

    def search(self, query: ArrayLike, k: int, largest: bool = True) -> TopK:
        """The k largest (or, with `largest=False`, smallest) inner products per query row.

        Returns:
            TopK with `values` float32 `[n_query, k]` and `indices` int64 `[n_query, k]`, best first.
        """
        if not hasattr(self, "index_"):
            raise NotFittedError("FaissTopK.search called before fit(train_features).")
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive int, got {k!r}.")
        q = _rows(query, self.normalize)
        if q.ndim != 2 or q.shape[1] != self.dim_:
            raise ConfigError(f"queries must be [n, {self.dim_}], got {tuple(q.shape)}.")
        k = min(k, self.n_train_)
        if self.kind == "ivf":
            self.index_.nprobe = self.nprobe
        elif self.kind == "hnsw":
            self.index_.hnsw.efSearch = max(self.ef_search, k)
        values, indices = self.index_.search(q if largest else -q, k)
        values = values if largest else -values
        return TopK(
            torch.from_numpy(np.ascontiguousarray(values)), torch.from_numpy(indices.astype(np.int64))
        )

    def recall(self, query: ArrayLike, train: ArrayLike, k: int) -> float:
        """recall@k of this index against exact search ("flat") on the same training features."""
        exact = FaissTopK("flat", normalize=self.normalize, use_gpu=self.use_gpu).fit(train).search(query, k)
        return recall_at_k(self.search(query, k).indices, exact.indices)


def recall_at_k(found: torch.Tensor | np.ndarray, exact: torch.Tensor | np.ndarray) -> float:
    """Mean over queries of `|found[q] ∩ exact[q]| / k` (indices `[n_query, k]`; -1 = no result)."""
    found, exact = np.asarray(found), np.asarray(exact)
    if found.shape != exact.shape or found.ndim != 2:
        raise ConfigError(f"index arrays must both be [n_query, k], got {found.shape} and {exact.shape}.")
    if found.size == 0:
        return float("nan")
    hits = [len(set(f[f >= 0].tolist()) & set(e.tolist())) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits) / exact.shape[1])


def faiss_topk(
    query: ArrayLike, train: ArrayLike, k: int, kind: str = "flat", largest: bool = True, **options: Any
) -> TopK:
    """One-shot `FaissTopK(kind, **options).fit(train).search(query, k, largest)`."""
    return FaissTopK(kind, **options).fit(train).search(query, k, largest)
