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


def _attend_chunk(q, k, v, q_pos, k_pos, scale, window, keep_first, full_from):
    """Attention of one query chunk of one sequence, fp32 math. q: (n, Hq, D); k, v: (m, Hkv, D)."""
    mask = visible(q_pos, k_pos, window=window, keep_first=keep_first, full_from=full_from)
    # (heads, tokens, dim) layout; enable_gqa lets each group of q heads share a kv head.
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float().transpose(0, 1), k.float().transpose(0, 1), v.float().transpose(0, 1),
        attn_mask=mask, scale=scale, enable_gqa=True,
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
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
        window=window, keep_first=keep_first, full_from=full_from,
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
