"""Group scores from example scores: AirRep's attention pooling and the plain sum (ablation).

For a query x with example scores `s_i = <Enc(x), Enc(z_i)>` and a group S (a boolean mask over the
training set):

    attention:  f(x, S) = sum_{i in S} softmax_{i in S}(s_i) * s_i      (a smooth maximum of the s_i)
    sum:        f(x, S) = sum_{i in S} s_i

Limits of attention pooling: one member -> `s`; equal scores -> their mean (= that score); scaling all
scores up -> the group's maximum. An empty group gets 0. Positive f = the group helps the query.
"""

from __future__ import annotations

import torch

POOLINGS = ("attention", "sum")
#: Entries of one `[B, K, N]` float64 block of the masked fallback (2^24 = 128 MB): unchunked, the block has
#: B * K * N entries, which exhausts memory with thousands of groups.
_MASKED_BLOCK = 1 << 24


def attention_pool(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Attention-pooled group scores (differentiable, exact).

    Computed with two matmuls: `e = exp(s - max_i s)` in float64 (one shift per query), then
    `f = ((e * s) @ masks.T) / (e @ masks.T)`; the shift cancels in the ratio, so this is the softmax
    over each group's members. Groups whose denominator underflows (all members more than ~700 below
    the query's best score) are recomputed with the masked softmax (`attention_pool_masked`), a block of
    groups at a time.

    Args:
        scores: `[B, N]` example scores `s[q, i]`.
        masks: bool `[K, N]`, `masks[j, i]` = example i is in group j.

    Returns:
        float64 `[B, K]` with `f[q, j] = sum_{i in S_j} softmax_{S_j}(s[q])_i * s[q, i]` (0 for an
        empty group). Float64 because groups are large: differences between groups are small next to
        the scores themselves.
    """
    masks = masks.to(device=scores.device, dtype=torch.bool)
    s = scores.double()
    m = masks.double().T  # [N, K]
    e = torch.exp(s - s.detach().amax(1, keepdim=True))
    num, den = (e * s) @ m, e @ m
    ok = den > 0
    out = torch.where(ok, num / torch.where(ok, den, 1.0), 0.0)
    bad = (~ok) & masks.any(1)[None, :]
    if bool(bad.any()):
        rows, cols = bad.any(1).nonzero().flatten(), bad.any(0).nonzero().flatten()
        chunk = max(1, _MASKED_BLOCK // max(1, len(rows) * s.shape[1]))  # bounds the [rows, chunk, N] block
        exact = torch.cat(
            [attention_pool_masked(s[rows], masks[cols[a : a + chunk]]) for a in range(0, len(cols), chunk)],
            dim=1,
        )
        patch = torch.zeros_like(out).index_put((rows[:, None], cols[None, :]), exact)
        out = torch.where(bad, patch, out)
    return out


def attention_pool_masked(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The same as `attention_pool` by a masked softmax over a `[B, K, N]` block (the reference form)."""
    masks = masks.to(device=scores.device, dtype=torch.bool)
    s = scores.double()[:, None, :]  # [B, 1, N]
    logits = s.masked_fill(~masks, float("-inf"))  # [B, K, N]
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # empty group: all -inf -> NaN -> 0
    return (weights * s.masked_fill(~masks, 0.0)).sum(-1)


def sum_pool(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Summed group scores float64 `[B, K]` = `scores [B, N] @ masks.T` (the ablation; = the base default)."""
    return scores.double() @ masks.to(device=scores.device, dtype=torch.float64).T


def pool(scores: torch.Tensor, masks: torch.Tensor, pooling: str) -> torch.Tensor:
    """`attention_pool` or `sum_pool` by name (`[B, N]`, `[K, N]` -> `[B, K]`)."""
    if pooling == "attention":
        return attention_pool(scores, masks)
    if pooling == "sum":
        return sum_pool(scores, masks)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")


@torch.no_grad()
def group_scores(
    query_emb: torch.Tensor,
    train_emb: torch.Tensor,
    masks: torch.Tensor,
    pooling: str = "attention",
    query_chunk: int = 1024,
) -> torch.Tensor:
    """Pooled group scores from embeddings, `query_chunk` queries at a time.

    Args:
        query_emb: `[n_query, d]` query embeddings.
        train_emb: `[N, d]` training embeddings.
        masks: bool `[K, N]` group membership.
        pooling: "attention" or "sum".
        query_chunk: queries per block (memory `query_chunk * (N + K)`).

    Returns:
        float32 `[n_query, K]` on the CPU (computed in float64).
    """
    masks = torch.as_tensor(masks).to(torch.bool)
    train = train_emb.double()
    out = torch.empty(len(query_emb), len(masks), dtype=torch.float32)
    for a in range(0, len(query_emb), query_chunk):
        scores = query_emb[a : a + query_chunk].double() @ train.T  # [b, N]
        out[a : a + query_chunk] = pool(scores, masks, pooling).float().cpu()
    return out
