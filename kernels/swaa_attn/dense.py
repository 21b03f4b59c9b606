"""Full causal attention over packed sequences through torch SDPA.

A full-attention layer (window None) has no mask to exploit, and on Hopper cuDNN's fused
attention (torch SDPA's cuDNN backend) runs it faster than the Triton kernel (BENCHMARKS.md).
Whether a layer takes this route is the caller's choice (the model integration knows the
layer); this module only computes it: one batched SDPA call when the sequences share one
length, one call per sequence otherwise. GQA goes through SDPA's enable_gqa.
"""

from __future__ import annotations

import contextlib

import torch


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
) -> torch.Tensor:
    """Causal attention within each sequence of a pack whose queries are its keys.

    q: (total, Hq, D); k, v: (total, Hkv, D); cu_seqlens: (batch + 1,). Returns (total, Hq, D).
    Reads the lengths on the host (a device sync on CUDA).
    """
    # (heads, tokens, dim) layout, as SDPA wants it.
    qh, kh, vh = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
    gqa = {"enable_gqa": True} if kh.shape[0] != qh.shape[0] else {}
    lengths = cu_seqlens.diff().tolist()
    with _backend_priority(q.device):
        if _one_length(lengths):  # one batched call: (sequences, heads, n, dim)
            batched = lambda t: t.unflatten(1, (len(lengths), lengths[0])).transpose(0, 1)
            out = torch.nn.functional.scaled_dot_product_attention(
                batched(qh), batched(kh), batched(vh), is_causal=True, scale=softmax_scale, **gqa
            )
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
