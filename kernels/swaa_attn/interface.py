"""Public entry point: picks the Triton kernel or the reference.

Placeholder until the Triton kernel lands: every call goes to the reference.
"""

from __future__ import annotations

import torch

from .naive import swaa_attn_varlen_ref


def swaa_attn_varlen_func(
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
    return swaa_attn_varlen_ref(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
        window=window, keep_first=keep_first, full_from=full_from, softmax_scale=softmax_scale,
    )
