"""Triton varlen FlashAttention (forward and backward) under the SWAA mask.

Layout and semantics are those of `naive.swaa_attn_varlen_ref` (the specification).
Scheme (FlashAttention-2):
- forward: one program per (query head, query tile); online softmax in fp32 on base-2
  exponentials of log2(e)-scaled scores; saves the log-sum-exp (base 2) per row;
- backward: a preprocess kernel computes delta = rowsum(out * dout); a dK/dV kernel runs one
  program per (kv head, key tile) and loops over the query heads of its GQA group and the
  query tiles that can see the key tile. dQ either comes from the same kernel, added with
  atomics into an fp32 buffer (5 matmuls per tile pair, `bwd_fused`), or from a dQ kernel
  with one program per (query head, query tile) over the key tiles the tile can see (7).
Tile skipping: a query tile visits the sink tiles, the window band and, once it reaches the
FA-decode region, every earlier tile; a key tile visits the query tiles of its window band,
all later query tiles if it holds a sink key, and the FA-decode query tiles. Each of those
visits is split into tiles that the mask cuts (element masks applied) and tiles that are
fully visible (no mask arithmetic). The programs of each sequence's tiles are found through a
tile -> (sequence, tile index) table that one small kernel builds on the device, so packs of
uneven documents launch no empty programs beyond one per sequence, and no call reads
anything back to the host.
Tiles stream through TMA tensor descriptors (`fwd_tma`, `bwd_tma`) where the layout allows it
(token-major with the heads packed, head dim a power of two), else through pointer loads. Every
pointer offset is 64-bit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .checks import check_head_dim, check_varlen_args, check_varlen_shapes

try:  # host-side TMA descriptors (triton >= 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None
# TMA bulk reduce-add from a descriptor (the fused backward's dq_tma) came later than TMA loads.
_HAS_TMA_REDUCE = hasattr(getattr(tl.core, "tensor_descriptor_base", None), "atomic_add")

# Stand-in for "no limit" (window None, full_from None); positions stay far below it.
UNBOUNDED = 1 << 30
_UNBOUNDED = tl.constexpr(UNBOUNDED)
LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------
# The mask, the tile ranges and the sequence lookup (shared by the forward, dK/dV and dQ loops)
# ----------------------------------------------------------------------------------------


@triton.jit
def _visible(ii, jj, klen, window, keep_first, full_from):
    """The SWAA mask (naive.visible) plus the sequence's key bound; ii, jj broadcast to the tile.

    The window and FA-decode terms fold into each row's lowest visible key.
    """
    lo = tl.where(ii >= full_from, 0, ii - window + 1)
    return (jj <= ii) & (jj < klen) & ((jj >= lo) | (jj < keep_first))


@triton.jit
def _walk(t, s1, c1, s2, c2, s3):
    """Tile index of step t of a walk over [s1, s1+c1), then [s2, s2+c2), then [s3, ...)."""
    return tl.where(t < c1, s1 + t, tl.where(t < c1 + c2, s2 + t - c1, s3 + t - c1 - c2))


@triton.jit
def _key_ranges(i0, i1, klen, window, keep_first, full_from, BLOCK_N: tl.constexpr):
    """Key tiles seen by query rows i0..i1 (absolute positions, i1 the last valid row).

    Returns (s_full, ns, nb0, f_lo, f_hi, nb1): sink tiles [0, ns) of which [0, s_full) are
    fully visible; band tiles [nb0, nb1) of which [f_lo, f_hi) are fully visible.
    """
    decode_any = i1 >= full_from
    decode_all = i0 >= full_from
    band_lo = tl.where(decode_any, 0, tl.maximum(i0 - window + 1, 0))
    band_hi = tl.minimum(i1 + 1, klen)
    nb0 = band_lo // BLOCK_N
    nb1 = tl.cdiv(band_hi, BLOCK_N)
    ns = tl.minimum(tl.cdiv(tl.minimum(keep_first, band_lo), BLOCK_N), nb0)
    s_full = tl.minimum(keep_first // BLOCK_N, ns)
    # A band tile is fully visible when every row is causally past its last key and either
    # all rows are in the FA-decode region or its first key is inside every row's window.
    win_full = tl.where(decode_all, 0, tl.cdiv(tl.maximum(i1 - window + 1, 0), BLOCK_N))
    f_lo = tl.minimum(tl.maximum(win_full, nb0), nb1)
    f_hi = tl.minimum(tl.maximum((i0 + 1) // BLOCK_N, f_lo), nb1)
    return s_full, ns, nb0, f_lo, f_hi, nb1


@triton.jit
def _query_ranges(j0, qlen, offset, window, keep_first, full_from, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query tiles (indices within the sequence) that see keys j0..j0+BLOCK_N-1.

    Returns (a0, cf, wf, mb_hi, d0, dm_hi, g): masked tiles [a0, cf), [wf, mb_hi), [d0, dm_hi);
    fully visible tiles [cf, wf) and [g, nq).
    """
    j1 = j0 + BLOCK_N - 1
    nq = tl.cdiv(qlen, BLOCK_M)
    a0 = tl.minimum(tl.maximum(j0 - offset, 0) // BLOCK_M, nq)
    # Rows that reach the tile through the window (all later rows when it holds a sink key).
    a1 = tl.where(j0 < keep_first, nq, tl.cdiv(tl.maximum(j1 + window - offset, 0), BLOCK_M))
    a1 = tl.minimum(tl.maximum(a1, a0), nq)
    cf = tl.minimum(tl.maximum(tl.cdiv(tl.maximum(j1 - offset, 0), BLOCK_M), a0), nq)
    wf = tl.where(j1 < keep_first, nq, tl.maximum(j0 + window - offset, 0) // BLOCK_M)
    wf = tl.minimum(tl.maximum(wf, cf), a1)
    # FA-decode rows: [d0, nq) see the tile, [g, nq) see all of it.
    d0 = tl.minimum(tl.maximum(tl.maximum(full_from - offset, 0) // BLOCK_M, a1), nq)
    g = tl.minimum(tl.maximum(tl.cdiv(tl.maximum(full_from - offset, 0), BLOCK_M), cf), nq)
    mb_hi = tl.maximum(wf, tl.minimum(a1, g))
    dm_hi = tl.maximum(d0, g)
    g = tl.maximum(g, wf)
    return a0, cf, wf, mb_hi, d0, dm_hi, g


@triton.jit
def _sequence(CuQ, CuK, FullFrom, seq, HAS_FULL_FROM: tl.constexpr):
    """(q0, qlen, k0, klen, full_from) of a sequence; full_from clamped to [0, UNBOUNDED]."""
    q0 = tl.load(CuQ + seq)
    qlen = tl.load(CuQ + seq + 1) - q0
    k0 = tl.load(CuK + seq)
    klen = tl.load(CuK + seq + 1) - k0
    if HAS_FULL_FROM:
        full_from = tl.minimum(tl.maximum(tl.load(FullFrom + seq), 0), _UNBOUNDED).to(tl.int32)
    else:
        full_from = _UNBOUNDED
    return q0, qlen, k0, klen, full_from


@triton.jit(do_not_specialize=["batch", "n_slots"])
def _tile_table_kernel(
    Cu, TileSeq, TileIdx, batch, n_slots, TILE: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr
):
    """TileSeq[s], TileIdx[s]: the sequence and tile index of the pack's s-th tile (sequence -1 past the last)."""
    slots = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    seq = tl.zeros([BLOCK], dtype=tl.int32)
    start = tl.zeros([BLOCK], dtype=tl.int32)  # first slot of the slot's sequence
    done = tl.full([], 0, dtype=tl.int32)  # tiles of the sequences before the chunk
    for b0 in range(0, batch, CHUNK):
        bs = b0 + tl.arange(0, CHUNK)
        ok = bs < batch
        lens = tl.load(Cu + bs + 1, mask=ok, other=0) - tl.load(Cu + bs, mask=ok, other=0)
        tiles = tl.where(ok, tl.cdiv(lens, TILE), 0)
        ends = done + tl.cumsum(tiles, 0)
        before = ends[None, :] <= slots[:, None]  # sequences that end at or before the slot
        seq += tl.sum(before.to(tl.int32), 1)
        start = tl.maximum(start, tl.max(tl.where(before, ends[None, :], 0), 1))
        done += tl.sum(tiles, 0)
    in_range = slots < n_slots
    tl.store(TileSeq + slots, tl.where(seq < batch, seq, -1), mask=in_range)
    tl.store(TileIdx + slots, slots - start, mask=in_range)


# ----------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------


@triton.jit
def _load_rows(
    P, Pd, row0, col, start, offs, offs_d, stride, n_rows,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, USE_TMA: tl.constexpr,
):  # fmt: skip
    """Rows start..start+len(offs)-1 of one head: through the TMA descriptor Pd at (row0 + start, col), or
    through pointers from P (the sequence's first row of that head), masked to n_rows and HEAD_DIM."""
    if USE_TMA:
        # Rows past the sequence come from the next one (zeros past the tensor). Their scores are masked
        # (keys) or their lse is +inf (queries), so with finite inputs they weigh exactly 0.
        return Pd.load([row0 + start, col])
    else:
        rows = start + offs
        ptrs = P + rows.to(tl.int64)[:, None] * stride + offs_d[None, :]
        if MASKED:
            return tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        elif BLOCK_D != HEAD_DIM:  # fully visible tiles end at the diagonal: only D is bounded
            return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        else:
            return tl.load(ptrs)


@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q, K, V, Kd, Vd, k0, kv_col, stride_kt, stride_vt, offs_i, offs_n, offs_d,
    s1, c1, s2, c2, s3, c3, klen, window, keep_first, full_from, qk_scale,
    MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, USE_TMA: tl.constexpr,
):  # fmt: skip
    for t in tl.range(0, c1 + c2 + c3, warp_specialize=WARP_SPECIALIZE):
        start_n = _walk(t, s1, c1, s2, c2, s3) * BLOCK_N
        k = _load_rows(K, Kd, k0, kv_col, start_n, offs_n, offs_d, stride_kt, klen, HEAD_DIM, BLOCK_D, MASKED, USE_TMA)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASKED:
            vis = _visible(offs_i[:, None], (start_n + offs_n)[None, :], klen, window, keep_first, full_from)
            qk = tl.where(vis, qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            p = tl.math.exp2(qk - m_new[:, None])
        else:  # scale folded into one multiply-add per score (qk_scale > 0)
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(V, Vd, k0, kv_col, start_n, offs_n, offs_d, stride_vt, klen, HEAD_DIM, BLOCK_D, MASKED, USE_TMA)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


# Scalars that vary from call to call are not specialized on (no recompile per window size).
@triton.jit(do_not_specialize=["total_q", "n_tiles", "window", "keep_first"])
def _fwd_kernel(
    Q, K, V, Kd, Vd, Out, Lse, CuQ, CuK, FullFrom, TileSeq, TileIdx,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    total_q, n_tiles, qk_scale, window, keep_first,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, USE_TMA: tl.constexpr,
    HAS_FULL_FROM: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(0)
    head64 = head.to(tl.int64)  # pointer offsets are 64-bit throughout
    slot = n_tiles - 1 - tl.program_id(1)  # last tiles see the most keys: start them first
    seq = tl.load(TileSeq + slot)
    if seq < 0:
        return
    tile = tl.load(TileIdx + slot)
    q0, qlen, k0, klen, full_from = _sequence(CuQ, CuK, FullFrom, seq, HAS_FULL_FROM)
    offset = klen - qlen  # bottom-right alignment

    offs_r = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_i = offs_r + offset
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    i0 = tile * BLOCK_M + offset
    i1 = tl.minimum((tile + 1) * BLOCK_M, qlen) - 1 + offset

    row_ok = offs_r < qlen
    io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q_rows = (q0 + offs_r).to(tl.int64)
    q = tl.load(Q + q_rows[:, None] * stride_qt + head64 * stride_qh + offs_d[None, :], mask=io_mask, other=0.0)
    kv_head = head // GROUP
    K = K + k0.to(tl.int64) * stride_kt + kv_head.to(tl.int64) * stride_kh
    V = V + k0.to(tl.int64) * stride_vt + kv_head.to(tl.int64) * stride_vh
    kv_col = kv_head * HEAD_DIM

    s_full, ns, nb0, f_lo, f_hi, nb1 = _key_ranges(i0, i1, klen, window, keep_first, full_from, BLOCK_N)
    # A finite floor keeps exp2(m_old - m_new) at 1, not NaN, while a row has seen only masked keys.
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, K, V, Kd, Vd, k0, kv_col, stride_kt, stride_vt, offs_i, offs_n, offs_d,
        0, s_full, f_lo, f_hi - f_lo, 0, 0, klen, window, keep_first, full_from, qk_scale,
        False, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION, WARP_SPECIALIZE, USE_TMA,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, K, V, Kd, Vd, k0, kv_col, stride_kt, stride_vt, offs_i, offs_n, offs_d,
        s_full, ns - s_full, nb0, f_lo - nb0, f_hi, nb1 - f_hi, klen, window, keep_first, full_from, qk_scale,
        True, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION, WARP_SPECIALIZE, USE_TMA,
    )  # fmt: skip
    l_i = tl.where(l_i > 0.0, l_i, 1.0)
    acc = acc / l_i[:, None]
    out_ptrs = Out + q_rows[:, None] * stride_ot + head64 * stride_oh + offs_d[None, :]
    tl.store(out_ptrs, acc.to(Out.dtype.element_ty), mask=io_mask)
    tl.store(Lse + head64 * total_q + q0 + offs_r, m_i + tl.math.log2(l_i), mask=row_ok)


# ----------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["total_q"])
def _bwd_delta_kernel(
    Out, DOut, Delta, DQAcc, stride_ot, stride_oh, stride_dt, stride_dh, stride_at, stride_ah, total_q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, ZERO_DQ: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(out * dout); also zeroes the fp32 dQ accumulator of the fused backward."""
    head = tl.program_id(0)
    head64 = head.to(tl.int64)
    rows = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < total_q) & (offs_d[None, :] < HEAD_DIM)
    rows64 = rows.to(tl.int64)
    o = tl.load(Out + rows64[:, None] * stride_ot + head64 * stride_oh + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DOut + rows64[:, None] * stride_dt + head64 * stride_dh + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + head64 * total_q + rows, delta, mask=rows < total_q)
    if ZERO_DQ:
        zeros = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
        tl.store(DQAcc + rows64[:, None] * stride_at + head64 * stride_ah + offs_d[None, :], zeros, mask=mask)


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, Q, DO, DQAcc, Qd, DOd, DQd, Lse, Delta, q0, q_col, stride_qt, stride_dot, stride_at,
    offs_j, offs_m, offs_d, s1, c1, s2, c2, s3, c3, qlen, offset, klen, window, keep_first, full_from, qk_scale,
    MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, USE_TMA: tl.constexpr, FUSED_DQ: tl.constexpr,
    DQ_TMA: tl.constexpr,
):  # fmt: skip
    for t in tl.range(0, c1 + c2 + c3, warp_specialize=WARP_SPECIALIZE):
        start_m = _walk(t, s1, c1, s2, c2, s3) * BLOCK_M
        rows = start_m + offs_m
        row_ok = rows < qlen
        q = _load_rows(Q, Qd, q0, q_col, start_m, offs_m, offs_d, stride_qt, qlen, HEAD_DIM, BLOCK_D, True, USE_TMA)
        # Rows past the sequence get lse = +inf, so their probabilities are exactly 0.
        lse = tl.load(Lse + rows, mask=row_ok, other=float("inf"))
        qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)
        pT = tl.math.exp2(qkT * qk_scale - lse[None, :])
        if MASKED:
            vis = _visible((rows + offset)[None, :], offs_j[:, None], klen, window, keep_first, full_from)
            pT = tl.where(vis, pT, 0.0)
        do = _load_rows(DO, DOd, q0, q_col, start_m, offs_m, offs_d, stride_dot, qlen, HEAD_DIM, BLOCK_D, True, USE_TMA)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        delta = tl.load(Delta + rows, mask=row_ok, other=0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
        if FUSED_DQ:  # dQ (unscaled) of these rows from this key tile, added into the fp32 accumulator
            dq = tl.dot(tl.trans(dsT.to(k.dtype)), k, input_precision=DOT_PRECISION)
            if DQ_TMA:  # a bulk reduce-add; rows past the sequence add exact zeros
                DQd.atomic_add([q0 + start_m, q_col], dq)
            else:
                ptrs = DQAcc + rows.to(tl.int64)[:, None] * stride_at + offs_d[None, :]
                tl.atomic_add(ptrs, dq, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), sem="relaxed")
    return dk, dv


@triton.jit(do_not_specialize=["total_q", "window", "keep_first"])
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, DQAcc, Qd, DOd, DQd, Lse, Delta, CuQ, CuK, FullFrom, TileSeq, TileIdx,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_at, stride_ah,
    total_q, sm_scale, qk_scale, window, keep_first,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, USE_TMA: tl.constexpr,
    FUSED_DQ: tl.constexpr, DQ_TMA: tl.constexpr, HAS_FULL_FROM: tl.constexpr,
):  # fmt: skip
    kv_head = tl.program_id(0)
    kv_head64 = kv_head.to(tl.int64)
    slot = tl.program_id(1)  # first tiles hold the sinks, seen by every later query: start them first
    seq = tl.load(TileSeq + slot)
    if seq < 0:
        return
    tile = tl.load(TileIdx + slot)
    q0, qlen, k0, klen, full_from = _sequence(CuQ, CuK, FullFrom, seq, HAS_FULL_FROM)
    offset = klen - qlen

    j0 = tile * BLOCK_N
    offs_j = j0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_j[:, None] < klen) & (offs_d[None, :] < HEAD_DIM)
    k_rows = (k0 + offs_j).to(tl.int64)
    k = tl.load(K + k_rows[:, None] * stride_kt + kv_head64 * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + k_rows[:, None] * stride_vt + kv_head64 * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)

    a0, cf, wf, mb_hi, d0, dm_hi, g = _query_ranges(j0, qlen, offset, window, keep_first, full_from, BLOCK_M, BLOCK_N)
    nq = tl.cdiv(qlen, BLOCK_M)
    dk = tl.full([BLOCK_N, BLOCK_D], 0.0, dtype=tl.float32)
    dv = tl.full([BLOCK_N, BLOCK_D], 0.0, dtype=tl.float32)
    for h in range(GROUP):
        head64 = (kv_head * GROUP + h).to(tl.int64)
        Qh = Q + q0.to(tl.int64) * stride_qt + head64 * stride_qh
        DOh = DO + q0.to(tl.int64) * stride_dot + head64 * stride_doh
        DQh = DQAcc + q0.to(tl.int64) * stride_at + head64 * stride_ah
        Lseh = Lse + head64 * total_q + q0
        Deltah = Delta + head64 * total_q + q0
        q_col = (kv_head * GROUP + h) * HEAD_DIM
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Qh, DOh, DQh, Qd, DOd, DQd, Lseh, Deltah, q0, q_col, stride_qt, stride_dot, stride_at,
            offs_j, offs_m, offs_d, cf, wf - cf, g, nq - g, 0, 0, qlen, offset, klen, window, keep_first, full_from,
            qk_scale, False, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION, WARP_SPECIALIZE, USE_TMA, FUSED_DQ, DQ_TMA,
        )  # fmt: skip
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Qh, DOh, DQh, Qd, DOd, DQd, Lseh, Deltah, q0, q_col, stride_qt, stride_dot, stride_at,
            offs_j, offs_m, offs_d, a0, cf - a0, wf, mb_hi - wf, d0, dm_hi - d0, qlen, offset, klen, window,
            keep_first, full_from, qk_scale, True, HEAD_DIM, BLOCK_D, BLOCK_M, DOT_PRECISION, WARP_SPECIALIZE, USE_TMA,
            FUSED_DQ, DQ_TMA,
        )  # fmt: skip
    dk_ptrs = DK + k_rows[:, None] * stride_dkt + kv_head64 * stride_dkh + offs_d[None, :]
    tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    dv_ptrs = DV + k_rows[:, None] * stride_dvt + kv_head64 * stride_dvh + offs_d[None, :]
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit(do_not_specialize=["total_q"])
def _bwd_dq_convert_kernel(
    DQAcc, DQ, stride_at, stride_ah, stride_dqt, stride_dqh, total_q, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """dq = sm_scale * the fp32 accumulator of the fused backward, in q's dtype."""
    head64 = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < total_q) & (offs_d[None, :] < HEAD_DIM)
    rows64 = rows.to(tl.int64)
    acc = tl.load(DQAcc + rows64[:, None] * stride_at + head64 * stride_ah + offs_d[None, :], mask=mask, other=0.0)
    dq_ptrs = DQ + rows64[:, None] * stride_dqt + head64 * stride_dqh + offs_d[None, :]
    tl.store(dq_ptrs, (acc * sm_scale).to(DQ.dtype.element_ty), mask=mask)


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, K, V, Kd, Vd, k0, kv_col, stride_kt, stride_vt, offs_i, offs_n, offs_d,
    s1, c1, s2, c2, s3, c3, klen, window, keep_first, full_from, qk_scale,
    MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, USE_TMA: tl.constexpr,
):  # fmt: skip
    for t in tl.range(0, c1 + c2 + c3, warp_specialize=WARP_SPECIALIZE):
        start_n = _walk(t, s1, c1, s2, c2, s3) * BLOCK_N
        k = _load_rows(K, Kd, k0, kv_col, start_n, offs_n, offs_d, stride_kt, klen, HEAD_DIM, BLOCK_D, MASKED, USE_TMA)
        v = _load_rows(V, Vd, k0, kv_col, start_n, offs_n, offs_d, stride_vt, klen, HEAD_DIM, BLOCK_D, MASKED, USE_TMA)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASKED:
            vis = _visible(offs_i[:, None], (start_n + offs_n)[None, :], klen, window, keep_first, full_from)
            p = tl.where(vis, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit(do_not_specialize=["total_q", "n_tiles", "window", "keep_first"])
def _bwd_dq_kernel(
    Q, K, V, Kd, Vd, DO, DQ, Lse, Delta, CuQ, CuK, FullFrom, TileSeq, TileIdx,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh, stride_dqt, stride_dqh,
    total_q, n_tiles, sm_scale, qk_scale, window, keep_first,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, USE_TMA: tl.constexpr,
    HAS_FULL_FROM: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(0)
    head64 = head.to(tl.int64)
    slot = n_tiles - 1 - tl.program_id(1)
    seq = tl.load(TileSeq + slot)
    if seq < 0:
        return
    tile = tl.load(TileIdx + slot)
    q0, qlen, k0, klen, full_from = _sequence(CuQ, CuK, FullFrom, seq, HAS_FULL_FROM)
    offset = klen - qlen

    offs_r = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_i = offs_r + offset
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    i0 = tile * BLOCK_M + offset
    i1 = tl.minimum((tile + 1) * BLOCK_M, qlen) - 1 + offset
    row_ok = offs_r < qlen
    io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q_rows = (q0 + offs_r).to(tl.int64)
    q = tl.load(Q + q_rows[:, None] * stride_qt + head64 * stride_qh + offs_d[None, :], mask=io_mask, other=0.0)
    do = tl.load(DO + q_rows[:, None] * stride_dot + head64 * stride_doh + offs_d[None, :], mask=io_mask, other=0.0)
    lse = tl.load(Lse + head64 * total_q + q0 + offs_r, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + head64 * total_q + q0 + offs_r, mask=row_ok, other=0.0)
    kv_head = head // GROUP
    K = K + k0.to(tl.int64) * stride_kt + kv_head.to(tl.int64) * stride_kh
    V = V + k0.to(tl.int64) * stride_vt + kv_head.to(tl.int64) * stride_vh
    kv_col = kv_head * HEAD_DIM

    s_full, ns, nb0, f_lo, f_hi, nb1 = _key_ranges(i0, i1, klen, window, keep_first, full_from, BLOCK_N)
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)
    dq = _dq_tiles(
        dq, q, do, lse, delta, K, V, Kd, Vd, k0, kv_col, stride_kt, stride_vt, offs_i, offs_n, offs_d,
        0, s_full, f_lo, f_hi - f_lo, 0, 0, klen, window, keep_first, full_from, qk_scale,
        False, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION, WARP_SPECIALIZE, USE_TMA,
    )  # fmt: skip
    dq = _dq_tiles(
        dq, q, do, lse, delta, K, V, Kd, Vd, k0, kv_col, stride_kt, stride_vt, offs_i, offs_n, offs_d,
        s_full, ns - s_full, nb0, f_lo - nb0, f_hi, nb1 - f_hi, klen, window, keep_first, full_from, qk_scale,
        True, HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION, WARP_SPECIALIZE, USE_TMA,
    )  # fmt: skip
    dq_ptrs = DQ + q_rows[:, None] * stride_dqt + head64 * stride_dqh + offs_d[None, :]
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=io_mask)


# ----------------------------------------------------------------------------------------
# Launch wrappers
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    """Tile shapes and launch settings; *_M tiles run over queries, *_N over keys."""

    block_m: int = 128
    block_n: int = 128
    fwd_warps: int = 8
    fwd_stages: int = 3
    block_m1: int = 64  # dK/dV kernel: query tile
    block_n1: int = 128  # dK/dV kernel: key tile
    block_m2: int = 128  # dQ kernel: query tile
    block_n2: int = 64  # dQ kernel: key tile
    bwd_warps: int = 8
    bwd_stages: int = 3
    fwd_warp_specialize: bool = False
    bwd_warp_specialize: bool = False
    fwd_tma: bool = False  # forward K/V tiles through TMA descriptors where the layout allows
    bwd_tma: bool = False  # backward Q/dO (dK/dV kernel) and K/V (dQ kernel) tiles likewise
    bwd_fused: bool = False  # dQ from the dK/dV kernel through fp32 atomics (5 matmuls per tile pair, not 7)
    dq_tma: bool = False  # the fused dQ added by TMA bulk reduce-add instead of element atomics


# Keyed on the padded head dim: the fastest of benchmarks/bench_kernel.py's sweep on an H200 (triton 3.6,
# benchmarks/KERNEL_NOTES.md); every shape is one whose registers fit without spilling.
GPU_CONFIGS = {
    64: KernelConfig(
        block_m=64,
        block_n=64,  # 64x64 forward: 0.25 ms at 16k vs 0.29 for 64x128 (KERNEL_NOTES.md, version 2)
        fwd_warps=4,
        block_m1=32,
        block_n1=128,
        fwd_tma=True,
        bwd_tma=True,
        bwd_fused=True,
        dq_tma=True,
    ),
    128: KernelConfig(block_m1=32, block_n1=128, bwd_stages=2, fwd_tma=True, bwd_tma=True),
    256: KernelConfig(
        block_m=64,
        block_n=64,
        fwd_warps=4,
        fwd_stages=2,
        block_m1=32,
        block_n1=64,
        block_m2=64,
        block_n2=32,
        bwd_warps=4,
        bwd_stages=2,
    ),  # fmt: skip
}
# fp32 (tests only) takes twice the shared memory per tile: half-size tiles.
FP32_GPU_CONFIG = KernelConfig(
    block_m=64, block_n=32, fwd_warps=4, fwd_stages=2, block_m1=32, block_n1=64, block_m2=64, block_n2=32,
    bwd_warps=4, bwd_stages=2,
)  # fmt: skip
# Small tiles under the interpreter: short test sequences still span many tiles.
INTERPRETER_CONFIG = KernelConfig(block_m=32, block_n=32, block_m1=32, block_n1=64, block_m2=64, block_n2=32)


def select_config(block_d: int, dtype: torch.dtype = torch.bfloat16, device_type: str = "cuda") -> KernelConfig:
    """Tile shapes for a padded head dim; CPU tensors run under the Triton interpreter. Under
    torch.use_deterministic_algorithms(True) the backward takes dQ from its own kernel, not from
    the fused dK/dV kernel's atomics, whose order of additions changes from run to run (two
    trainings of one seed drift apart; docs/adaptation.md)."""
    if device_type != "cuda":
        return INTERPRETER_CONFIG
    cfg = FP32_GPU_CONFIG if dtype == torch.float32 else GPU_CONFIGS[max(64, block_d)]
    if cfg.bwd_fused and torch.are_deterministic_algorithms_enabled():
        cfg = dataclasses.replace(cfg, bwd_fused=False, dq_tma=False)
    return cfg


def _tile_table(cu_seqlens: torch.Tensor, tile: int, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence, tile index) of each tile of the pack, padded with sequence -1; one launch, no host sync."""
    batch = cu_seqlens.numel() - 1
    n_slots = total // tile + batch  # at least the number of tiles
    seq = torch.empty(max(n_slots, 1), dtype=torch.int32, device=cu_seqlens.device)
    idx = torch.empty_like(seq)
    block = 256
    _tile_table_kernel[(triton.cdiv(max(n_slots, 1), block),)](
        cu_seqlens, seq, idx, batch, max(n_slots, 1), TILE=tile, BLOCK=block, CHUNK=64
    )
    return seq, idx


def _dot_precision(dtype: torch.dtype) -> str | None:
    # fp32 inputs are for tests: exact products, not tf32. 16-bit inputs take the default.
    return "ieee" if dtype == torch.float32 else None


def _descriptor(t: torch.Tensor, block_rows: int, block_d: int, enabled: bool):
    """A TMA descriptor over (tokens, heads * D) for token-major tensors with packed heads, else None."""
    tokens, heads, dim = t.shape
    if not enabled or TensorDescriptor is None or dim != block_d or tokens == 0:
        return None
    if t.stride(2) != 1 or t.stride(1) != dim or (t.stride(0) * t.element_size()) % 16 or t.data_ptr() % 16:
        return None
    return TensorDescriptor(t, [tokens, heads * dim], [t.stride(0), 1], [block_rows, block_d])


def _launch_fwd(q, k, v, cu_q, cu_k, full_from, window, keep_first, scale, cfg):
    total_q, hq, head_dim = q.shape
    block_d = max(16, triton.next_power_of_2(head_dim))
    out = torch.empty_like(q)
    lse = torch.empty((hq, total_q), device=q.device, dtype=torch.float32)
    seq, tile = _tile_table(cu_q, cfg.block_m, total_q)
    kd, vd = (_descriptor(t, cfg.block_n, block_d, cfg.fwd_tma) for t in (k, v))
    use_tma = kd is not None and vd is not None
    _fwd_kernel[(hq, seq.numel())](
        q, k, v, kd if use_tma else None, vd if use_tma else None, out, lse, cu_q, cu_k, full_from, seq, tile,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        total_q, seq.numel(), scale * LOG2E, window, keep_first,
        GROUP=hq // k.shape[1], HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        DOT_PRECISION=_dot_precision(q.dtype), WARP_SPECIALIZE=cfg.fwd_warp_specialize, USE_TMA=use_tma,
        HAS_FULL_FROM=full_from is not None, num_warps=cfg.fwd_warps, num_stages=cfg.fwd_stages,
    )  # fmt: skip
    return out, lse


def _launch_bwd(do, q, k, v, out, lse, cu_q, cu_k, full_from, window, keep_first, scale, cfg):
    total_q, hq, head_dim = q.shape
    total_k, hkv, _ = k.shape
    block_d = max(16, triton.next_power_of_2(head_dim))
    precision = _dot_precision(q.dtype)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    # The fused backward adds dQ into fp32 (zeroed by the delta kernel), then scales and casts it.
    dq_acc = torch.empty((total_q, hq, head_dim), device=q.device, dtype=torch.float32) if cfg.bwd_fused else dq
    delta = torch.empty_like(lse)
    block_t = 64
    _bwd_delta_kernel[(hq, triton.cdiv(total_q, block_t))](
        out, do, delta, dq_acc, out.stride(0), out.stride(1), do.stride(0), do.stride(1),
        dq_acc.stride(0), dq_acc.stride(1), total_q,
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_T=block_t, ZERO_DQ=cfg.bwd_fused,
    )  # fmt: skip
    qd, dod = (_descriptor(t, cfg.block_m1, block_d, cfg.bwd_tma) for t in (q, do))
    use_tma = qd is not None and dod is not None
    dqd = _descriptor(dq_acc, cfg.block_m1, block_d, cfg.bwd_fused and cfg.dq_tma and _HAS_TMA_REDUCE)
    has_full_from = full_from is not None
    seq_k, tile_k = _tile_table(cu_k, cfg.block_n1, total_k)
    _bwd_dkdv_kernel[(hkv, seq_k.numel())](
        q, k, v, do, dk, dv, dq_acc, qd if use_tma else None, dod if use_tma else None, dqd,
        lse, delta, cu_q, cu_k, full_from, seq_k, tile_k,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), dq_acc.stride(0), dq_acc.stride(1),
        total_q, scale, scale * LOG2E, window, keep_first,
        GROUP=hq // hkv, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=cfg.block_m1, BLOCK_N=cfg.block_n1,
        DOT_PRECISION=precision, WARP_SPECIALIZE=cfg.bwd_warp_specialize, USE_TMA=use_tma,
        FUSED_DQ=cfg.bwd_fused, DQ_TMA=dqd is not None, HAS_FULL_FROM=has_full_from,
        num_warps=cfg.bwd_warps, num_stages=cfg.bwd_stages,
    )  # fmt: skip
    if cfg.bwd_fused:
        _bwd_dq_convert_kernel[(hq, triton.cdiv(total_q, block_t))](
            dq_acc, dq, dq_acc.stride(0), dq_acc.stride(1), dq.stride(0), dq.stride(1), total_q, scale,
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_T=block_t,
        )  # fmt: skip
        return dq, dk, dv
    kd, vd = (_descriptor(t, cfg.block_n2, block_d, cfg.bwd_tma) for t in (k, v))
    use_tma = kd is not None and vd is not None
    seq_q, tile_q = _tile_table(cu_q, cfg.block_m2, total_q)
    _bwd_dq_kernel[(hq, seq_q.numel())](
        q, k, v, kd if use_tma else None, vd if use_tma else None, do, dq, lse, delta, cu_q, cu_k, full_from,
        seq_q, tile_q,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
        dq.stride(0), dq.stride(1), total_q, seq_q.numel(), scale, scale * LOG2E, window, keep_first,
        GROUP=hq // hkv, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=cfg.block_m2, BLOCK_N=cfg.block_n2,
        DOT_PRECISION=precision, WARP_SPECIALIZE=cfg.bwd_warp_specialize, USE_TMA=use_tma,
        HAS_FULL_FROM=has_full_from, num_warps=cfg.bwd_warps, num_stages=cfg.bwd_stages,
    )  # fmt: skip
    return dq, dk, dv


# ----------------------------------------------------------------------------------------
# autograd.Function and public function
# ----------------------------------------------------------------------------------------


class SWAAAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, full_from, window, keep_first, scale, cfg):
        out, lse = _launch_fwd(q, k, v, cu_q, cu_k, full_from, window, keep_first, scale, cfg)
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, full_from)
        ctx.settings = (window, keep_first, scale, cfg)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu_q, cu_k, full_from = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dq, dk, dv = _launch_bwd(dout, q, k, v, out, lse, cu_q, cu_k, full_from, *ctx.settings)
        return dq, dk, dv, None, None, None, None, None, None, None


def _checks_values(q: torch.Tensor, check_values: bool | None) -> bool:
    """Auto: read cu_seqlens on the host (a device sync) for CPU tensors only, never while compiling."""
    if check_values is not None:
        return check_values
    return not q.is_cuda and not torch.compiler.is_compiling()


def swaa_attn_varlen_triton(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, window=None, keep_first=0, full_from=None,
    softmax_scale=None, check_values: bool | None = None, config: KernelConfig | None = None,
):  # fmt: skip
    """The Triton kernel behind `swaa_attn_varlen_func` (same semantics). CPU tensors need the
    Triton interpreter (TRITON_INTERPRET=1 before triton is imported).

    check_values: validate cu_seqlens / max_seqlen on the host (a device sync on CUDA); None means
    on for CPU tensors, off for CUDA ones. config overrides the tile shapes.
    """
    kwargs = {"window": window, "keep_first": keep_first, "full_from": full_from}
    if _checks_values(q, check_values):
        check_varlen_args(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kwargs)
    else:
        check_varlen_shapes(q, k, v, cu_seqlens_q, cu_seqlens_k, **kwargs)
    check_head_dim(q.shape[-1])
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if full_from is not None:  # clamped in the kernels; int32 or int64
        full_from = full_from.to(device=q.device).contiguous()
    window = UNBOUNDED if window is None else min(window, UNBOUNDED)
    keep_first = min(keep_first, UNBOUNDED)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if not scale > 0:
        raise ValueError(f"softmax_scale must be positive for the Triton kernel, got {softmax_scale!r}")
    cfg = config or select_config(max(16, triton.next_power_of_2(q.shape[-1])), q.dtype, q.device.type)
    return SWAAAttnFunction.apply(
        q, k, v, cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), full_from, window, keep_first, float(scale), cfg
    )
