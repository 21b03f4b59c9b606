"""Public entry point: the Triton kernel on CUDA tensors, the PyTorch reference otherwise.

The kernel module is imported on first use, so CPU-only callers never import Triton.
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
    check_values: bool | None = None,
) -> torch.Tensor:
    """Attention under the SWAA mask over packed sequences (semantics: naive.swaa_attn_varlen_ref).

    q: (total_q, Hq, D); k, v: (total_k, Hkv, D) with Hq % Hkv == 0; cu_seqlens_*: int32
    (batch + 1,); full_from: int (batch,) or None. Returns (total_q, Hq, D), differentiable
    in q, k and v. check_values: validate cu_seqlens / max_seqlen on the host, a device sync
    (None: on for CPU tensors, off for CUDA ones; the reference always validates).
    """
    kwargs = dict(window=window, keep_first=keep_first, full_from=full_from, softmax_scale=softmax_scale)
    if q.is_cuda:
        from .ops import swaa_attn_varlen_triton

        return swaa_attn_varlen_triton(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, check_values=check_values, **kwargs
        )
    return swaa_attn_varlen_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kwargs)
