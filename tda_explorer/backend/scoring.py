"""Chunked scoring and streaming top-k over feature matrices.

`scores[q, t] = <query_features[q], train_features[t]>` (optionally after a
per-side transform done by the caller). The full `[n_query, n_train]` matrix is
built only by `dot_scores`; `streaming_topk` keeps just the k best and k worst
per query while walking train chunks, so memory is `O(n_query * (k + chunk))`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_TRAIN_CHUNK = 8192


def dot_scores(
    query: torch.Tensor, train: torch.Tensor, train_chunk: int = DEFAULT_TRAIN_CHUNK
) -> torch.Tensor:
    """`query [nq, k] @ train [nt, k].T` in train chunks, float32 `[nq, nt]` on the CPU."""
    out = torch.empty(len(query), len(train), dtype=torch.float32)
    for s in range(0, len(train), train_chunk):
        block = query @ train[s : s + train_chunk].to(query.device, query.dtype).T
        out[:, s : s + train_chunk] = block.float().cpu()
    return out


@dataclass
class TopK:
    """Top-k per query: `values`/`indices` `[nq, k]`, sorted best first (largest for `top`, smallest for `bottom`)."""

    values: torch.Tensor
    indices: torch.Tensor


def streaming_topk(
    query: torch.Tensor,
    train: torch.Tensor,
    k: int,
    largest: bool = True,
    train_chunk: int = DEFAULT_TRAIN_CHUNK,
) -> TopK:
    """k largest (or smallest) `<query[q], train[t]>` per query without materialising the score matrix."""
    k = min(k, len(train))
    best_v = torch.empty(len(query), 0, dtype=torch.float32, device=query.device)
    best_i = torch.empty(len(query), 0, dtype=torch.int64, device=query.device)
    for s in range(0, len(train), train_chunk):
        block = (query @ train[s : s + train_chunk].to(query.device, query.dtype).T).float()
        idx = torch.arange(s, s + block.shape[1], device=query.device).expand(len(query), -1)
        v = torch.cat([best_v, block], dim=1)
        i = torch.cat([best_i, idx], dim=1)
        top_v, pos = v.topk(min(k, v.shape[1]), dim=1, largest=largest)
        best_v, best_i = top_v, i.gather(1, pos)
    return TopK(best_v.cpu(), best_i.cpu())
