"""Full causal attention over packed sequences through torch SDPA.

A full-attention layer (window None) has no mask to exploit, and on Hopper cuDNN's fused
attention (torch SDPA's cuDNN backend) runs it faster than the Triton kernel: 1.16 s against
1.58 s per layer of a 128k-token training step (BENCHMARKS.md). `swaa_attn_varlen_func`
sends such layers here when the queries are the keys (training, prefill) and the pack holds
sequences of one length (one batched SDPA call); everything else stays on the Triton kernel.
Measured on an H100 (BENCHMARKS.md): a 32k full layer takes 55 ms forward+backward here against
82 ms on the Triton kernel, while a pack of 8 x 4k documents sliced into one SDPA call per
document took 14-19 ms against Triton's 13, which is why uneven packs do not come here.

SWAA_ATTN_FULL_BACKEND picks the route of full-attention layers: "auto" (the default: SDPA on
CUDA), "triton" (always the Triton kernel) or "sdpa" (SDPA on any device, CPU tests included).
"""

from __future__ import annotations

import contextlib
import os

import torch

# GQA through SDPA's enable_gqa (cuDNN takes it in torch 2.11: as fast as repeating k/v to all
# query heads, with less memory); repeat_kv=True repeats them instead, for backends that need it.
REPEAT_KV = False


def wanted(q: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, window: int | None) -> bool:
    """Whether this call goes to SDPA: a full-attention layer, queries == keys, CUDA, sequences of one length."""
    backend = os.environ.get("SWAA_ATTN_FULL_BACKEND", "auto")
    if backend not in ("auto", "triton", "sdpa"):
        raise ValueError(f"SWAA_ATTN_FULL_BACKEND must be auto, triton or sdpa, got {backend!r}")
    if window is not None or backend == "triton" or (backend == "auto" and not q.is_cuda):
        return False
    if cu_seqlens_q is not cu_seqlens_k and not torch.equal(cu_seqlens_q, cu_seqlens_k):
        return False
    return _one_length(cu_seqlens_q.diff().tolist())


def _one_length(lengths: list[int]) -> bool:
    """Non-empty sequences, all of one length: one batched SDPA call covers them."""
    return bool(lengths) and lengths[0] > 0 and all(n == lengths[0] for n in lengths)


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
    lengths = cu_seqlens.diff().tolist()
    with _backend_priority(q.device):
        if _one_length(lengths):  # one batched call: (sequences, heads, n, dim)
            batched = lambda t: t.unflatten(1, (len(lengths), lengths[0])).transpose(0, 1)  # noqa: E731
            out = torch.nn.functional.scaled_dot_product_attention(
                batched(qh), batched(kh), batched(vh), is_causal=True, scale=softmax_scale, **gqa)
            return out.transpose(1, 2).reshape(q.shape)  # a view when the backend wrote token-major
        bounds = cu_seqlens.tolist()  # uneven packs (the training benchmark's baseline): one call each
        outs = [
            torch.nn.functional.scaled_dot_product_attention(
                qh[None, :, s:e], kh[None, :, s:e], vh[None, :, s:e], is_causal=True, scale=softmax_scale, **gqa
            )[0].transpose(0, 1)  # back to (tokens, heads, dim)
            for s, e in zip(bounds[:-1], bounds[1:])
            if e > s
        ]
    if not outs:
        return torch.empty_like(q)
    return outs[0].contiguous() if len(outs) == 1 else torch.cat(outs)
