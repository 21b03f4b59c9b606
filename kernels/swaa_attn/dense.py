"""Full causal attention over packed sequences through torch SDPA, one call per sequence.

A full-attention layer (window None) has no mask to exploit, and on Hopper cuDNN's fused
attention (torch SDPA's cuDNN backend) runs it faster than the Triton kernel: 1.16 s against
1.58 s per layer of a 128k-token training step (BENCHMARKS.md). `swaa_attn_varlen_func`
sends such layers here when the queries are the keys (training, prefill) and the pack holds
few sequences; everything else stays on the Triton kernel. The sequences are sliced on the
host, so a pack of many short documents, where one launch per document would dominate, does
not come here.

SWAA_ATTN_FULL_BACKEND picks the route of full-attention layers: "auto" (the default: SDPA on
CUDA), "triton" (always the Triton kernel) or "sdpa" (SDPA on any device, CPU tests included).
"""

from __future__ import annotations

import contextlib
import os

import torch

# Packs of more sequences than this stay on the Triton kernel (one SDPA launch per sequence).
MAX_SEQUENCES = 16
# cuDNN's attention needs as many k/v heads as q heads: repeat them (a transient copy of k
# and v, freed after the layer) rather than fall back to a slower backend.
REPEAT_KV = True


def wanted(q: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, window: int | None) -> bool:
    """Whether this call goes to SDPA: a full-attention layer, queries == keys, CUDA, few sequences."""
    backend = os.environ.get("SWAA_ATTN_FULL_BACKEND", "auto")
    if backend not in ("auto", "triton", "sdpa"):
        raise ValueError(f"SWAA_ATTN_FULL_BACKEND must be auto, triton or sdpa, got {backend!r}")
    if window is not None or backend == "triton" or (backend == "auto" and not q.is_cuda):
        return False
    if cu_seqlens_q.numel() - 1 > MAX_SEQUENCES:
        return False
    return cu_seqlens_q is cu_seqlens_k or torch.equal(cu_seqlens_q, cu_seqlens_k)


def _backend_priority(device: torch.device):
    """cuDNN first on CUDA (the fastest full-causal kernel on Hopper), then the other fused ones."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


def full_causal_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    softmax_scale: float | None = None,
    repeat_kv: bool | None = None,
) -> torch.Tensor:
    """Causal attention within each sequence of a pack whose queries are its keys.

    q: (total, Hq, D); k, v: (total, Hkv, D); cu_seqlens: (batch + 1,). Returns (total, Hq, D).
    """
    repeat_kv = REPEAT_KV if repeat_kv is None else repeat_kv
    groups = q.shape[1] // k.shape[1]
    # (heads, tokens, dim) layout, as SDPA wants it.
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    if groups > 1 and repeat_kv:
        kh, vh = kh.repeat_interleave(groups, 0), vh.repeat_interleave(groups, 0)
    gqa = {"enable_gqa": True} if kh.shape[0] != qh.shape[0] else {}
    bounds = cu_seqlens.tolist()
    with _backend_priority(q.device):
        outs = [
            torch.nn.functional.scaled_dot_product_attention(
                qh[None, :, s:e], kh[None, :, s:e], vh[None, :, s:e], is_causal=True, scale=softmax_scale, **gqa
            )[0].transpose(0, 1)  # back to (tokens, heads, dim)
            for s, e in zip(bounds[:-1], bounds[1:])
            if e > s
        ]
    if not outs:
        return torch.empty_like(q)
    # The fused backends write the output token-major already, so this is a copy only for packs.
    return outs[0].contiguous() if len(outs) == 1 else torch.cat(outs)
