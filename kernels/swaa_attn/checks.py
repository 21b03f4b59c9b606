"""Argument validation shared by the reference and the Triton kernel.

Every error is a ValueError that names the offending argument.
"""

from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_cu_seqlens(name: str, cu: torch.Tensor, total: int) -> None:
    if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.dim() != 1:
        raise ValueError(f"{name} must be a 1-D int32 tensor, got {getattr(cu, 'dtype', type(cu))}")
    if cu.numel() < 1:
        raise ValueError(f"{name} must hold at least one element (batch + 1)")
    values = cu.tolist()
    if values[0] != 0:
        raise ValueError(f"{name} must start at 0, got {values[0]}")
    if any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f"{name} must be non-decreasing, got {values}")
    if values[-1] != total:
        raise ValueError(f"{name}[-1] = {values[-1]} does not match the packed length {total}")


def check_varlen_shapes(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    window: int | None,
    keep_first: int,
    full_from: torch.Tensor | None,
) -> None:
    """The checks that need no device sync: shapes, dtypes and scalar arguments."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ValueError(f"{name} must be (total, heads, head_dim), got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; supported: fp16, bf16, fp32")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype, got q={q.dtype} k={k.dtype} v={v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k={tuple(k.shape)} v={tuple(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q head_dim {q.shape[2]} differs from k head_dim {k.shape[2]}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q heads ({q.shape[1]}) must be a multiple of k heads ({k.shape[1]})")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.dim() != 1:
            raise ValueError(f"{name} must be a 1-D int32 tensor, got {getattr(cu, 'dtype', type(cu))}")
        if cu.numel() < 1:
            raise ValueError(f"{name} must hold at least one element (batch + 1)")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(
            f"cu_seqlens_q ({cu_seqlens_q.numel()}) and cu_seqlens_k ({cu_seqlens_k.numel()}) "
            "must describe the same number of sequences"
        )
    if window is not None and (not isinstance(window, int) or window <= 0):
        raise ValueError(f"window must be a positive int or None, got {window!r}")
    if not isinstance(keep_first, int) or keep_first < 0:
        raise ValueError(f"keep_first must be a non-negative int, got {keep_first!r}")
    if full_from is not None:
        if not isinstance(full_from, torch.Tensor) or full_from.dim() != 1:
            raise ValueError("full_from must be a 1-D int32 tensor of one entry per sequence")
        if full_from.numel() != cu_seqlens_q.numel() - 1:
            raise ValueError(f"full_from has {full_from.numel()} entries for {cu_seqlens_q.numel() - 1} sequences")
        if full_from.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"full_from must be an integer tensor, got {full_from.dtype}")


def check_varlen_values(
    q: torch.Tensor,
    k: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
) -> None:
    """The checks that read cu_seqlens on the host (a device sync on CUDA tensors)."""
    _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0])
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0])
    len_q = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist()
    len_k = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).tolist()
    for b, (lq, lk) in enumerate(zip(len_q, len_k)):
        if lq > lk:
            raise ValueError(f"cu_seqlens_q: sequence {b} has {lq} queries but only {lk} keys")
    if len_q and max(len_q) > max_seqlen_q:
        raise ValueError(f"max_seqlen_q = {max_seqlen_q} is below the longest query sequence {max(len_q)}")
    if len_k and max(len_k) > max_seqlen_k:
        raise ValueError(f"max_seqlen_k = {max_seqlen_k} is below the longest key sequence {max(len_k)}")


def check_varlen_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    window: int | None,
    keep_first: int,
    full_from: torch.Tensor | None,
) -> None:
    """Raise ValueError naming the argument if the varlen call is malformed."""
    check_varlen_shapes(q, k, v, cu_seqlens_q, cu_seqlens_k, window=window, keep_first=keep_first, full_from=full_from)
    check_varlen_values(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)


# The Triton kernel pads the head dim to a power of two; beyond this its tiles do not fit on chip.
MAX_KERNEL_HEAD_DIM = 256


def check_head_dim(head_dim: int) -> None:
    """Head dims the Triton kernel supports (the reference takes any)."""
    if head_dim > MAX_KERNEL_HEAD_DIM:
        raise ValueError(f"head_dim = {head_dim} is not supported by the Triton kernel (at most {MAX_KERNEL_HEAD_DIM})")
