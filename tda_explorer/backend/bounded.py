"""Memory-bounded top-k scoring over feature matrices that live on disk as memory-mapped `.npy` files.

`scores[q, t] = <query[q], train[t]>` (the convention of `backend.scoring`: rows = queries, positive =
the training example helps the query when the features are signed that way). `topk_scores` walks the
training features in chunks of `train_chunk` rows and the queries in chunks of `query_chunk` rows, so
the `[n_query, n_train]` score matrix is never built: memory is about
`4 * (train_chunk * d + query_chunk * train_chunk + n_query * (d + 2k))` bytes, whatever `n_train`.

Memory-mapped inputs (`np.load(path, mmap_mode="r")`) are read chunk by chunk; after each chunk the
mapped pages are released from this process (`madvise(MADV_DONTNEED)`; the OS page cache keeps them),
so reading a 2 GB feature file does not grow the resident set by 2 GB. `NpyWriter` writes a `.npy`
file chunk by chunk with plain writes (no dirty mapped pages), for features that do not fit in RAM.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import torch

from tda_explorer.backend.device import get_device
from tda_explorer.backend.scoring import TopK
from tda_explorer.errors import ConfigError
from tda_explorer.progress import Progress

DEFAULT_TRAIN_CHUNK = 16384
DEFAULT_QUERY_CHUNK = 2048

ArrayLike = np.ndarray | torch.Tensor


def release_pages(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped array from this process's resident set (no-op otherwise).

    The data stays in the OS page cache and is read again transparently on the next access.
    """
    mm = getattr(array, "_mmap", None)  # numpy.memmap (and its slices) keep their mmap object here
    if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # closed or unsupported: nothing to release
            pass


def iter_row_chunks(array: ArrayLike, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield `(start, rows)` with `rows` a float32 CPU tensor `[b, d]` of `array[start:start+b]`.

    For a memory-mapped array each chunk is copied into memory and the mapping's pages are released
    right after, so the resident set stays about one chunk.
    """
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}.")
    for s in range(0, len(array), chunk):
        if isinstance(array, torch.Tensor):
            yield s, array[s : s + chunk].float()
            continue
        rows = torch.from_numpy(np.array(array[s : s + chunk], dtype=np.float32, copy=True))
        release_pages(array)
        yield s, rows


def _check_pair(query: ArrayLike, train: ArrayLike) -> tuple[int, int, int]:
    if query.ndim != 2 or train.ndim != 2 or query.shape[1] != train.shape[1]:
        raise ConfigError(
            f"features must be 2-d with the same width: query {tuple(query.shape)}, train {tuple(train.shape)}."
        )
    return int(query.shape[0]), int(train.shape[0]), int(query.shape[1])


@torch.no_grad()
def topk_scores(
    query: ArrayLike,
    train: ArrayLike,
    k: int,
    largest: bool = True,
    train_chunk: int = DEFAULT_TRAIN_CHUNK,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> TopK:
    """The k largest (or smallest) `<query[q], train[t]>` per query, without the full score matrix.

    Args:
        query: `[n_query, d]` features (array, memmap or tensor); held in memory in float32.
        train: `[n_train, d]` features, typically `np.load(path, mmap_mode="r")`; read once, in chunks.
        k: how many per query (at most n_train).
        largest: True for the top (proponents), False for the bottom (opponents).
        train_chunk: training rows read and scored at once.
        query_chunk: query rows scored against a training chunk at once.
        device: where the matmuls run (default `get_device()`: CUDA when present).
        progress: `progress(rows_done, n_train, msg)` after each training chunk.

    Returns:
        TopK with `values` float32 `[n_query, k]` and `indices` int64 `[n_query, k]` (rows of `train`),
        sorted best first. Ties may come back in any order.
    """
    nq, nt, _ = _check_pair(query, train)
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive int, got {k!r}.")
    if query_chunk < 1:
        raise ConfigError(f"query_chunk must be >= 1, got {query_chunk}.")
    k = min(k, nt)
    dev = torch.device(device) if device is not None else get_device()
    q_all = next(iter_row_chunks(query, max(nq, 1)))[1].to(dev) if nq else torch.empty(0, query.shape[1])
    best_v = torch.full((nq, k), -torch.inf if largest else torch.inf, device=dev)
    best_i = torch.full((nq, k), -1, dtype=torch.int64, device=dev)
    for start, rows in iter_row_chunks(train, train_chunk):
        t = rows.to(dev)
        kk = min(k, len(t))
        for qs in range(0, nq, query_chunk):
            block = q_all[qs : qs + query_chunk] @ t.T  # [bq, bt]
            v, i = block.topk(kk, dim=1, largest=largest)
            merged_v = torch.cat([best_v[qs : qs + query_chunk], v], dim=1)
            merged_i = torch.cat([best_i[qs : qs + query_chunk], i + start], dim=1)
            top_v, pos = merged_v.topk(k, dim=1, largest=largest)
            best_v[qs : qs + query_chunk] = top_v
            best_i[qs : qs + query_chunk] = merged_i.gather(1, pos)
            del block
        if progress is not None:
            progress(start + len(t), nt, f"scored train rows {start}-{start + len(t) - 1}")
    return TopK(best_v.cpu(), best_i.cpu())


class NpyWriter:
    """Write a `[n, d]` `.npy` file chunk by chunk with plain file writes (memory: one chunk).

    Use inside an artifact's temp directory (`Workspace.write`) so the file appears atomically.

    Example:
        >>> with NpyWriter(tmp / "features.npy", (n, d)) as w:  # doctest: +SKIP
        ...     for chunk in chunks:
        ...         w.write(chunk)

    Args:
        path: the file to create.
        shape: the full shape; the rows written must add up to `shape[0]`.
        dtype: element type (default float32).
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: np.dtype | str = np.float32) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        if self.dtype.hasobject:
            raise ConfigError("NpyWriter writes plain numeric arrays only (no object dtype).")
        self.rows = 0
        self._f: BinaryIO | None = None

    def __enter__(self) -> NpyWriter:
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed in __exit__
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_2_0(self._f, header)
        return self

    def write(self, rows: ArrayLike) -> None:
        """Append rows `[b, *shape[1:]]` (converted to the writer's dtype)."""
        if self._f is None:
            raise ConfigError("NpyWriter.write called outside its `with` block.")
        if isinstance(rows, torch.Tensor):
            rows = rows.detach().cpu().numpy()
        arr = np.ascontiguousarray(rows, dtype=self.dtype)
        if arr.shape[1:] != self.shape[1:] or self.rows + len(arr) > self.shape[0]:
            raise ConfigError(
                f"NpyWriter({self.path.name}): got rows {arr.shape} after {self.rows} of {self.shape}."
            )
        self._f.write(arr.tobytes())
        self.rows += len(arr)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if exc_type is None and self.rows != self.shape[0]:
            raise ConfigError(
                f"NpyWriter({self.path.name}): wrote {self.rows} rows, expected {self.shape[0]}."
            )
