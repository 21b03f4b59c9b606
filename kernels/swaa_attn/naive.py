"""The SWAA mask and a plain PyTorch attention that implements it literally.

This file is the specification: the Triton kernel, the transformers integration and every
dense test mask are checked against `visible` and `swaa_attn_varlen_ref`.

Within one sequence, a query at absolute position i sees key j when

    j <= i and (window is None or i - j < window or j < keep_first or i >= full_from)

Queries are bottom-right aligned to keys: with q_len < k_len, query r sits at
i = k_len - q_len + r (FlashAttention's varlen convention).
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from .checks import check_varlen_args

# Queries per chunk in the reference: bounds its memory at QUERY_CHUNK x k_len scores.
QUERY_CHUNK = 1024
# Longer sequences recompute each chunk in the backward instead of keeping its mask and
# whatever SDPA's backend saves; shorter ones (the CPU training path) skip the recompute.
CHECKPOINT_ABOVE = 4096


def visible(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    window: int | None,
    keep_first: int,
    full_from: int | float,
) -> torch.Tensor:
    """Boolean mask (len(q_pos), len(k_pos)): may query position i attend to key position j."""
    i = q_pos[:, None]
    j = k_pos[None, :]
    mask = j <= i
    if window is None:
        return mask
    return mask & ((i - j < window) | (j < keep_first) | (i >= full_from))


def _sum_from(lo: int, hi: int, c: int) -> int:
    """sum of (i + c) for i in [lo, hi)."""
    n = max(hi - lo, 0)
    return n * (lo + hi - 1) // 2 + c * n


def visible_pairs(
    q_len: int, k_len: int, *, window: int | None = None, keep_first: int = 0, full_from: int | None = None
) -> int:
    """Number of (query, key) pairs `visible` keeps in one sequence, in closed form.

    Queries are bottom-right aligned (positions k_len - q_len .. k_len - 1); full_from is an
    absolute key index (None: no FA-decode region). A row at position i sees i + 1 keys in the
    FA-decode region or without a window, else min(i + 1, window) keys of its window plus
    min(keep_first, i + 1 - window) sinks before it when that is positive.
    """
    if not 0 <= q_len <= k_len:
        raise ValueError(f"q_len must lie in [0, k_len], got q_len={q_len} k_len={k_len}")
    first = k_len - q_len
    split = first if window is None else min(max(first, k_len if full_from is None else full_from), k_len)
    total = _sum_from(split, k_len, 1)  # FA-decode (or full-attention) rows
    if split > first:
        w = window
        total += _sum_from(first, min(split, w), 1) + w * max(split - max(first, w), 0)  # window
        total += _sum_from(max(first, w), min(split, w + keep_first), 1 - w)  # sinks, partly in reach
        total += keep_first * max(split - max(first, w + keep_first), 0)  # all sinks
    return total


def visible_pairs_varlen(
    cu_seqlens_q, cu_seqlens_k, *, window: int | None = None, keep_first: int = 0, full_from=None
) -> int:
    """visible_pairs summed over the sequences of a pack (cu_seqlens and full_from: tensors or lists)."""
    tolist = lambda x: x.tolist() if isinstance(x, torch.Tensor) else list(x)
    bq, bk = tolist(cu_seqlens_q), tolist(cu_seqlens_k)
    limits = [None] * (len(bq) - 1) if full_from is None else tolist(full_from)
    return sum(
        visible_pairs(q1 - q0, k1 - k0, window=window, keep_first=keep_first, full_from=ff)
        for q0, q1, k0, k1, ff in zip(bq[:-1], bq[1:], bk[:-1], bk[1:], limits)
    )


def _attend_chunk(q, k, v, q_pos, k_pos, scale, window, keep_first, full_from):
    """Attention of one query chunk of one sequence, fp32 math. q: (n, Hq, D); k, v: (m, Hkv, D)."""
    mask = visible(q_pos, k_pos, window=window, keep_first=keep_first, full_from=full_from)
    # (heads, tokens, dim) layout; enable_gqa lets each group of q heads share a kv head.
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(0, 1),
        k.float().transpose(0, 1),
        v.float().transpose(0, 1),
        attn_mask=mask,
        scale=scale,
        enable_gqa=True,
    )
    return out.transpose(0, 1)


def swaa_attn_varlen_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    window: int | None = None,
    keep_first: int = 0,
    full_from: torch.Tensor | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Reference SWAA attention over packed sequences; same signature as the kernel.

    Computes in fp32 one query chunk at a time (never a T x T matrix) and returns q's dtype.
    For long sequences each chunk is checkpointed, so the backward also stays within one
    chunk's scores.
    """
    check_varlen_args(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        window=window,
        keep_first=keep_first,
        full_from=full_from,
    )
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    starts_q = cu_seqlens_q.tolist()
    starts_k = cu_seqlens_k.tolist()
    limits = full_from.tolist() if full_from is not None else [math.inf] * (len(starts_q) - 1)
    pieces = []
    for b in range(len(starts_q) - 1):
        q0, q1, k0, k1 = starts_q[b], starts_q[b + 1], starts_k[b], starts_k[b + 1]
        k_pos = torch.arange(k1 - k0, device=q.device)
        offset = (k1 - k0) - (q1 - q0)  # bottom-right alignment
        for c0 in range(q0, q1, QUERY_CHUNK):
            c1 = min(c0 + QUERY_CHUNK, q1)
            q_pos = torch.arange(c0 - q0, c1 - q0, device=q.device) + offset
            args = (q[c0:c1], k[k0:k1], v[k0:k1], q_pos, k_pos, scale, window, keep_first, limits[b])
            if needs_grad and k1 - k0 > CHECKPOINT_ABOVE:
                pieces.append(checkpoint(_attend_chunk, *args, use_reentrant=False))
            else:
                pieces.append(_attend_chunk(*args))
    if not pieces:
        return q.new_zeros(q.shape)
    return torch.cat(pieces).to(q.dtype)
