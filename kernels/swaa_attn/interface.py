"""Public entry point: picks the Triton kernel, SDPA or the reference.

The Triton kernel runs on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1 (tests);
everything else goes to the PyTorch reference. On CUDA, full-attention layers over
sequences of one length go to torch SDPA's fused kernels instead (dense.py says when and why).
The kernel module is imported on first use: Triton reads TRITON_INTERPRET when the kernels
are defined, and CPU-only callers never pay for importing Triton.
"""

from __future__ import annotations

import os

import torch

from . import dense
from .checks import check_varlen_args
from .naive import swaa_attn_varlen_ref


def _use_triton(q: torch.Tensor) -> bool:
    return q.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1"


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
    """Attention under the SWAA mask over packed sequences (semantics: naive.swaa_attn_varlen_ref).

    q: (total_q, Hq, D); k, v: (total_k, Hkv, D) with Hq % Hkv == 0; cu_seqlens_*: int32
    (batch + 1,); full_from: int (batch,) or None. Returns (total_q, Hq, D), differentiable
    in q, k and v.
    """
    if dense.wanted(q, cu_seqlens_q, cu_seqlens_k, window):
        check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                          window=None, keep_first=keep_first, full_from=full_from)
        return dense.full_causal_varlen(q, k, v, cu_seqlens_q, softmax_scale)
    kwargs = dict(window=window, keep_first=keep_first, full_from=full_from, softmax_scale=softmax_scale)
    if _use_triton(q):
        from .ops import swaa_attn_varlen_triton

        return swaa_attn_varlen_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kwargs)
    return swaa_attn_varlen_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kwargs)
