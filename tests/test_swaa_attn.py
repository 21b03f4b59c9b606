"""swaa_attn's Triton kernel against its PyTorch reference (naive.py): outputs and dq, dk, dv.

Without CUDA the kernel runs on CPU tensors under the Triton interpreter (tests/conftest.py
switches it on before triton is imported) and the tests call `swaa_attn.ops` directly, since
`swaa_attn_varlen_func` sends CPU tensors to the reference; shapes stay small. With CUDA the
same grid runs compiled, bf16 included, and the tests marked gpu run at real sizes. Every
kernel output is allocated NaN-filled, so an element the kernel never writes fails the
comparison.
"""

from __future__ import annotations

import dataclasses
import math
import os
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swaa_attn import (
    full_causal_varlen,
    swaa_attn_varlen_func,
    swaa_attn_varlen_ref,
    visible,
    visible_pairs,
    visible_pairs_varlen,
)
from swaa_attn.ops import GPU_CONFIGS, KernelConfig, select_config, swaa_attn_varlen_triton

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
# tl.dot on bf16 operands is wrong under the triton 3.9 interpreter: bf16 runs compiled only.
DTYPES = (torch.float32, torch.float16) + ((torch.bfloat16,) if HAS_CUDA else ())
# Relative error bounds: on the norm of the difference, and on its largest element.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def nan_poisoned_outputs(monkeypatch):
    """Every floating tensor from torch.empty / empty_like starts as NaN (the kernel's outputs)."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(math.nan) if t.is_floating_point() and not t.requires_grad else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(real_empty_like(*a, **kw)))


def _cu(lens):
    return torch.tensor([0, *torch.tensor(lens, dtype=torch.long).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)


def run_and_compare(
    lens_q,
    lens_k,
    *,
    hq=2,
    hkv=1,
    head_dim=64,
    dtype=torch.float32,
    window=None,
    keep_first=0,
    full_from=None,
    full_from_dtype=torch.int32,
    softmax_scale=None,
    seed=0,
    config=None,
    tol=None,
):
    """Kernel vs reference on random inputs: output and the three gradients."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype)

    q, k, v = rand(sum(lens_q), hq, head_dim), rand(sum(lens_k), hkv, head_dim), rand(sum(lens_k), hkv, head_dim)
    dout = rand(sum(lens_q), hq, head_dim)
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    ff = None if full_from is None else torch.tensor(full_from, dtype=full_from_dtype, device=DEVICE)
    args = (cu_q, cu_k, max(lens_q, default=0), max(lens_k, default=0))
    kwargs = dict(window=window, keep_first=keep_first, full_from=ff, softmax_scale=softmax_scale)

    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = swaa_attn_varlen_triton(*inputs, *args, **kwargs, config=config)
    grads = torch.autograd.grad(out, inputs, dout)

    # The reference computes in fp32 from the same (rounded) inputs.
    ref_inputs = [t.float().requires_grad_() for t in (q, k, v)]
    ref = swaa_attn_varlen_ref(*ref_inputs, *args, **kwargs)
    ref_grads = torch.autograd.grad(ref, ref_inputs, dout.float())

    tol = tol or TOLERANCE[dtype]
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads)):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert torch.isfinite(got).all(), f"{name}: non-finite (unwritten) elements"
        got = got.float()
        # Floors of 1% of a unit element: window 1 gives dq = 0 exactly in the reference.
        norm_scale = max(want.norm().item(), 0.01 * math.sqrt(want.numel()))
        max_scale = max(want.abs().max().item(), 0.01)
        assert (got - want).norm().item() <= tol * norm_scale, f"{name}: relative error too large"
        assert (got - want).abs().max().item() <= 4 * tol * max_scale, f"{name}: largest element error too large"


def test_outputs_are_nan_poisoned():
    assert torch.empty(3, 4).isnan().all() and torch.empty_like(torch.ones(2)).isnan().all()


# window None / 1 / smaller than, equal to, larger than the sequence; keep_first 0, 1, odd, > window.
@pytest.mark.parametrize("window", [None, 1, 40, 150, 400])
@pytest.mark.parametrize("keep_first", [0, 1, 7, 45])
def test_window_and_sinks(window, keep_first):
    if window is None and keep_first:
        pytest.skip("keep_first has no effect on a full-attention layer")
    run_and_compare([150], [150], window=window, keep_first=keep_first, seed=window or 0)


# Uneven pack with length-1 documents; full_from absent, 0, mid-document, past the end, mixed.
PACK = [37, 1, 100, 1, 64]


@pytest.mark.parametrize(
    "full_from",
    [
        None,
        [0] * len(PACK),
        [20, 0, 50, 1, 33],
        [1000, 5, 200, 1, 64],
        [37, 1, 99, 0, 70],
    ],
)
@pytest.mark.parametrize("window,keep_first", [(16, 3), (5, 40)])
def test_pack_full_from(full_from, window, keep_first):
    run_and_compare(PACK, PACK, window=window, keep_first=keep_first, full_from=full_from)


def test_full_from_int64_and_clamped():
    """full_from may be int64 and beyond int32's range; the kernel clamps it like the reference."""
    run_and_compare(
        PACK, PACK, window=16, keep_first=3, full_from=[2**40, -(2**35), 50, 0, 33], full_from_dtype=torch.int64
    )


# Fewer queries than keys (decoding, chunked prefill), bottom-right aligned; 0-query sequences.
@pytest.mark.parametrize(
    "lens_q,lens_k,full_from",
    [
        ([1], [80], None),
        ([1], [80], [79]),
        ([17, 0, 40], [120, 30, 41], None),
        ([17, 0, 40], [120, 30, 41], [110, 3, 20]),
        ([64, 3], [64, 97], [10, 95]),
    ],
)
def test_fewer_queries_than_keys(lens_q, lens_k, full_from):
    run_and_compare(lens_q, lens_k, window=20, keep_first=5, full_from=full_from)


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gqa_and_head_dim(group, head_dim):
    run_and_compare(
        [70, 45], [70, 45], hq=group, hkv=1, head_dim=head_dim, window=24, keep_first=3, full_from=[50, 100], seed=group
    )


@pytest.mark.parametrize("head_dim", [16, 48, 80])
def test_padded_head_dims(head_dim):
    run_and_compare([70], [70], hq=2, hkv=2, head_dim=head_dim, window=24, keep_first=3, full_from=[60])


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes(dtype):
    run_and_compare([90, 33], [90, 33], hq=4, hkv=2, dtype=dtype, window=20, keep_first=5, full_from=[70, 0])


def test_softmax_scale_and_strided_inputs():
    run_and_compare([60], [60], window=10, keep_first=2, softmax_scale=0.3)
    # (total, heads, dim) views of a (heads, total, dim) buffer, as transformers hands them over.
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 50, 64, generator=gen).to(DEVICE).transpose(0, 1) for _ in range(3))
    cu = _cu([50])
    got = swaa_attn_varlen_triton(q, k, v, cu, cu, 50, 50, window=9, keep_first=2)
    want = swaa_attn_varlen_ref(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, 50, 50, window=9, keep_first=2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "block_m,block_n,block_m1,block_n1,block_m2,block_n2",
    [
        (16, 16, 16, 16, 16, 16),
        (16, 64, 64, 16, 16, 32),
        (64, 16, 16, 32, 32, 16),
    ],
)
def test_tile_shapes(block_m, block_n, block_m1, block_n1, block_m2, block_n2):
    """The tile-skipping arithmetic must hold for any ratio of query to key tiles."""
    cfg = KernelConfig(
        block_m=block_m, block_n=block_n, block_m1=block_m1, block_n1=block_n1, block_m2=block_m2, block_n2=block_n2
    )
    run_and_compare([100, 1, 50], [130, 1, 50], window=13, keep_first=21, full_from=[90, 0, 25], config=cfg)


# dQ through atomics in the dK/dV kernel; tiles through TMA descriptors; dQ by TMA reduce-add.
@pytest.mark.parametrize(
    "variant",
    [
        {"bwd_fused": True},
        {"fwd_tma": True, "bwd_tma": True},
        {"fwd_tma": True, "bwd_tma": True, "bwd_fused": True},
        {"bwd_fused": True, "dq_tma": True},
        {"fwd_tma": True, "bwd_tma": True, "bwd_fused": False, "dq_tma": False},  # the deterministic backward
    ],
    ids=["fused", "tma", "tma-fused", "fused-dq-tma", "tma-dq-kernel"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_variants(variant, dtype):
    if variant.get("dq_tma") and not HAS_CUDA:
        pytest.skip("the Triton interpreter has no TMA reduce-add")
    cfg = dataclasses.replace(select_config(64, dtype, DEVICE), **variant)
    run_and_compare(
        [100, 1, 50],
        [130, 1, 50],
        hq=4,
        hkv=2,
        dtype=dtype,
        window=13,
        keep_first=21,
        full_from=[90, 0, 25],
        config=cfg,
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_configs(data):
    n_seq = data.draw(st.integers(1, 3), label="n_seq")
    lens_k = data.draw(st.lists(st.integers(1, 90), min_size=n_seq, max_size=n_seq), label="lens_k")
    lens_q = [data.draw(st.integers(0, lk), label="len_q") for lk in lens_k]
    window = data.draw(st.one_of(st.none(), st.integers(1, 100)), label="window")
    keep_first = data.draw(st.integers(0, 40), label="keep_first")
    full_from = data.draw(
        st.one_of(st.none(), st.lists(st.integers(-5, 110), min_size=n_seq, max_size=n_seq)), label="full_from"
    )
    group = data.draw(st.sampled_from([1, 2, 4]), label="group")
    if sum(lens_q) == 0:
        lens_q[0] = 1
    run_and_compare(
        lens_q,
        lens_k,
        hq=group,
        hkv=1,
        window=window,
        keep_first=keep_first,
        full_from=full_from,
        seed=data.draw(st.integers(0, 1000), label="seed"),
    )


def _valid_args(**override):
    gen = torch.Generator().manual_seed(0)
    args = dict(
        q=torch.randn(10, 4, 64, generator=gen),
        k=torch.randn(10, 2, 64, generator=gen),
        v=torch.randn(10, 2, 64, generator=gen),
        cu_seqlens_q=torch.tensor([0, 4, 10], dtype=torch.int32),
        cu_seqlens_k=torch.tensor([0, 4, 10], dtype=torch.int32),
        max_seqlen_q=6,
        max_seqlen_k=6,
        window=3,
        keep_first=1,
        full_from=torch.tensor([2, 3], dtype=torch.int32),
    )
    args.update(override)
    return {name: t.to(DEVICE) if isinstance(t, torch.Tensor) else t for name, t in args.items()}


def _call(entry, args):
    args = dict(args)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    positional = [args.pop(n) for n in ("cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k")]
    return entry(q, k, v, *positional, **args)


def _kernel_checked(*args, **kwargs):
    return swaa_attn_varlen_triton(*args, **kwargs, check_values=True)


def _func_checked(*args, **kwargs):
    return swaa_attn_varlen_func(*args, **kwargs, check_values=True)


# The public function (the reference on CPU) and the kernel, value checks on (on CUDA they are off
# unless asked for: they read cu_seqlens on the host).
ENTRIES = {"func": _func_checked, "kernel": _kernel_checked}


@pytest.mark.parametrize(
    "override,match",
    [
        (dict(q=torch.randn(10, 4, 32)), "head_dim"),
        (dict(k=torch.randn(10, 3, 64), v=torch.randn(10, 3, 64)), "multiple of k heads"),
        (dict(v=torch.randn(10, 2, 32)), "k and v"),
        (dict(q=torch.randn(10, 4, 64).half()), "dtype"),
        (dict(q=torch.randn(10, 4, 64).double()), "q has dtype"),
        (dict(q=torch.randn(10, 4)), "q must be"),
        (dict(cu_seqlens_q=torch.tensor([0, 4, 10])), "cu_seqlens_q"),
        (dict(cu_seqlens_k=torch.tensor([1, 4, 10], dtype=torch.int32)), "cu_seqlens_k must start at 0"),
        (
            dict(
                cu_seqlens_q=torch.tensor([0, 6, 4, 10], dtype=torch.int32),
                cu_seqlens_k=torch.tensor([0, 6, 4, 10], dtype=torch.int32),
                full_from=None,
            ),
            "non-decreasing",
        ),
        (dict(cu_seqlens_k=torch.tensor([0, 4, 9], dtype=torch.int32)), r"cu_seqlens_k\[-1\]"),
        (dict(cu_seqlens_k=torch.tensor([0, 10], dtype=torch.int32)), "same number of sequences"),
        (dict(max_seqlen_q=5), "max_seqlen_q"),
        (dict(max_seqlen_k=5), "max_seqlen_k"),
        (dict(window=0), "window"),
        (dict(window=-3), "window"),
        (dict(keep_first=-1), "keep_first"),
        (dict(full_from=torch.tensor([2], dtype=torch.int32)), "full_from"),
        (dict(full_from=torch.tensor([2.0, 3.0])), "full_from"),
        (dict(q=torch.randn(10, 4, 320), k=torch.randn(10, 2, 320), v=torch.randn(10, 2, 320)), "head_dim = 320"),
    ],
)
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_bad_inputs_name_the_argument(entry, override, match):
    if entry == "func" and not HAS_CUDA and match == "head_dim = 320":
        pytest.skip("the reference takes any head dim; only the kernel limits it")
    with pytest.raises(ValueError, match=match):
        _call(ENTRIES[entry], _valid_args(**override))


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_queries_beyond_keys_rejected(entry):
    args = _valid_args(cu_seqlens_k=torch.tensor([0, 2, 10], dtype=torch.int32), max_seqlen_k=8)
    with pytest.raises(ValueError, match="cu_seqlens_q: sequence 0"):
        _call(ENTRIES[entry], args)


def test_public_function_matches_the_kernel():
    """swaa_attn_varlen_func: the kernel on CUDA, the reference on CPU; either way the same function."""
    args = _valid_args()
    torch.testing.assert_close(
        _call(swaa_attn_varlen_func, args), _call(swaa_attn_varlen_triton, args), rtol=1e-4, atol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# 64-bit offsets
# ---------------------------------------------------------------------------------------------


def _far_apart(tokens, widths, dtype):
    """Tensors (tokens, heads, dim) whose rows lie 2**31 / 32 elements apart in one buffer, so that
    rows from 32 on start past element 2**31 of their tensor. The buffer is mapped lazily (only the
    pages the rows touch cost memory) and begins 2**31 elements before the views, so an offset
    that wraps to a negative int32 still lands inside it instead of faulting."""
    row = 2**31 // 32 + 64
    skip = 2**31
    buffer = torch.empty(skip + tokens * row, dtype=torch.int16, device=DEVICE).view(dtype)  # not NaN-filled
    views, start = [], skip
    for heads, dim in widths:
        view = buffer.as_strided((tokens, heads, dim), (row, dim, 1), start)
        view.copy_(torch.randn(tokens, heads, dim).to(dtype))
        views.append(view)
        start += heads * dim
    return views


def test_offsets_past_2_to_the_31_elements():
    """The kernel on rows past element 2**31 of q, k, v and dout gives what it gives on the same data
    contiguous, which matches the reference (int32 offsets wrap there: max |dk| error 2.2)."""
    tokens, hq, hkv, dim = 48, 2, 1, 16
    torch.manual_seed(0)
    q, k, v, dout = _far_apart(tokens, [(hq, dim), (hkv, dim), (hkv, dim), (hq, dim)], torch.float16)
    assert (tokens - 1) * q.stride(0) > 2**31
    cu = _cu([tokens])
    kwargs = dict(window=12, keep_first=3, full_from=torch.tensor([40], dtype=torch.int32, device=DEVICE))

    def run(q, k, v, dout):
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        out = swaa_attn_varlen_triton(*inputs, cu, cu, tokens, tokens, **kwargs)
        return (out, *torch.autograd.grad(out, inputs, dout))

    far = run(q, k, v, dout)
    near = run(*(t.contiguous() for t in (q, k, v, dout)))
    for name, got, want in zip(("out", "dq", "dk", "dv"), far, near):
        assert torch.equal(got, want), f"{name}: max error {(got.float() - want.float()).abs().max().item():.3g}"
    ref_inputs = [t.float().contiguous().requires_grad_() for t in (q, k, v)]
    ref = swaa_attn_varlen_ref(*ref_inputs, cu, cu, tokens, tokens, **kwargs)
    want = (ref, *torch.autograd.grad(ref, ref_inputs, dout.float()))
    for name, got, w in zip(("out", "dq", "dk", "dv"), far, want):
        assert (got.float() - w).norm() <= TOLERANCE[torch.float16] * w.norm(), name


# ---------------------------------------------------------------------------------------------
# Visible pairs in closed form
# ---------------------------------------------------------------------------------------------


def _count_visible(q_len, k_len, window, keep_first, full_from):
    i = torch.arange(k_len - q_len, k_len)
    limit = math.inf if full_from is None else full_from
    return int(visible(i, torch.arange(k_len), window=window, keep_first=keep_first, full_from=limit).sum())


@settings(max_examples=300, deadline=None)
@given(
    k_len=st.integers(0, 70),
    q_frac=st.floats(0, 1),
    window=st.one_of(st.none(), st.integers(1, 80)),
    keep_first=st.integers(0, 80),
    full_from=st.one_of(st.none(), st.integers(-5, 80)),
)
def test_visible_pairs_closed_form(k_len, q_frac, window, keep_first, full_from):
    q_len = round(q_frac * k_len)
    got = visible_pairs(q_len, k_len, window=window, keep_first=keep_first, full_from=full_from)
    assert got == _count_visible(q_len, k_len, window, keep_first, full_from)


def test_visible_pairs_of_a_pack():
    lens_q, lens_k, full_from = [3, 0, 40], [10, 5, 40], [8, 1, 30]
    want = sum(_count_visible(lq, lk, 6, 2, ff) for lq, lk, ff in zip(lens_q, lens_k, full_from))
    got = visible_pairs_varlen(_cu(lens_q), _cu(lens_k), window=6, keep_first=2, full_from=torch.tensor(full_from))
    assert got == want
    # Large sizes stay exact integers: full causal 128k is n (n + 1) / 2 pairs.
    assert visible_pairs(2**17, 2**17) == 2**17 * (2**17 + 1) // 2


def test_visible_pairs_rejects_more_queries_than_keys():
    with pytest.raises(ValueError, match="q_len"):
        visible_pairs(5, 4)


# ---------------------------------------------------------------------------------------------
# Full causal attention through SDPA (swaa_attn.dense), for layers without a window
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lens, hkv", [([40], 1), ([40], 2), ([16, 16, 16], 4), ([13, 5, 22], 2), ([7, 0, 9], 1)])
def test_full_causal_varlen(dtype, lens, hkv):
    """One batched SDPA call for sequences of one length, one call each otherwise; GQA through enable_gqa."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(sum(lens), h, 32, generator=g).to(DEVICE, dtype) for h in (4, hkv, hkv))
    cu = _cu(lens)
    got = full_causal_varlen(q, k, v, cu, 0.2)
    want = swaa_attn_varlen_ref(q.float(), k.float(), v.float(), cu, cu, max(lens), max(lens), softmax_scale=0.2)
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), want, atol=4 * TOLERANCE[dtype], rtol=4 * TOLERANCE[dtype])


def test_full_causal_varlen_of_an_empty_pack():
    q = torch.randn(0, 2, 16, device=DEVICE)
    assert full_causal_varlen(q, q, q, _cu([0, 0])).shape == (0, 2, 16)


# ---------------------------------------------------------------------------------------------
# Real sizes on the GPU
# ---------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    "case",
    [
        # one 32k sequence, SWAA training settings: window 2048, 100 sinks, last 1024 tokens FA decode
        dict(
            lens_q=[32768],
            lens_k=[32768],
            hq=8,
            hkv=2,
            head_dim=128,
            dtype=torch.bfloat16,
            window=2048,
            keep_first=100,
            full_from=[32768 - 1024],
        ),
        # pack of 8 x 4k documents, each with its own FA-decode region
        dict(
            lens_q=[4096] * 8,
            lens_k=[4096] * 8,
            hq=8,
            hkv=2,
            head_dim=128,
            dtype=torch.bfloat16,
            window=2048,
            keep_first=100,
            full_from=[3072, 0, 4096, 2000, 3072, 17, 5000, 3072],
        ),
        # uneven pack, head dim 64, fp16, GQA 4
        dict(
            lens_q=[9000, 1, 3000, 777, 5000],
            lens_k=[9000, 1, 3000, 777, 5000],
            hq=8,
            hkv=2,
            head_dim=64,
            dtype=torch.float16,
            window=1000,
            keep_first=37,
            full_from=[8000, 0, 2999, 100, 10000],
        ),
        # head dim 64, bf16, GQA 8, no sinks, no FA decode (the head-dim-64 benchmark case, fewer heads)
        dict(lens_q=[16384], lens_k=[16384], hq=8, hkv=1, head_dim=64, dtype=torch.bfloat16, window=1024),
        # chunked prefill: 4k queries against 16k keys, GQA 8
        dict(
            lens_q=[4096, 512],
            lens_k=[16384, 2048],
            hq=8,
            hkv=1,
            head_dim=128,
            dtype=torch.bfloat16,
            window=4096,
            keep_first=64,
            full_from=[15000, 1024],
        ),
        # full attention (window None) at 16k, fp32 exact products
        dict(lens_q=[16384], lens_k=[16384], hq=2, hkv=1, head_dim=64, dtype=torch.float32, window=None),
    ],
    ids=["32k", "8x4k", "uneven-d64-fp16", "d64-bf16", "chunked-prefill", "full-16k-fp32"],
)
def test_real_sizes(case):
    run_and_compare(**case)


@pytest.fixture
def deterministic_algorithms():
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(was, warn_only=warn_only)


def test_deterministic_algorithms_leave_out_the_atomic_dq(deterministic_algorithms):
    fused = [d for d, cfg in GPU_CONFIGS.items() if cfg.bwd_fused]
    assert fused  # the head dim 64 default adds dQ with atomics
    for head_dim in fused:
        cfg = select_config(head_dim, torch.bfloat16, "cuda")
        assert not cfg.bwd_fused and not cfg.dq_tma
        assert cfg == dataclasses.replace(GPU_CONFIGS[head_dim], bwd_fused=False, dq_tma=False)
    torch.use_deterministic_algorithms(False)
    assert all(select_config(d, torch.bfloat16, "cuda").bwd_fused for d in fused)
    # A recipe's `training.full_determinism: true`: the Trainer calls transformers' enable_full_determinism
    # (which also sets environment variables and cuDNN flags: put back afterwards).
    from transformers.trainer_utils import enable_full_determinism

    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    with mock.patch.dict(os.environ):
        enable_full_determinism(0)
        assert not any(select_config(d, torch.bfloat16, "cuda").bwd_fused for d in fused)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


@pytest.mark.gpu
@gpu
def test_real_size_backward_is_bitwise_repeatable_when_deterministic(deterministic_algorithms):
    """Head dim 64 (fused dQ by default): under deterministic algorithms two backward passes of
    one pack give the same bits."""
    g = torch.Generator().manual_seed(3)
    lens = [9000, 3000, 777, 5000]
    q, k, v = (torch.randn(sum(lens), h, 64, generator=g).to(DEVICE, torch.bfloat16) for h in (8, 2, 2))
    dout = torch.randn(sum(lens), 8, 64, generator=g).to(DEVICE, torch.bfloat16)
    cu = _cu(lens)
    grads = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = swaa_attn_varlen_triton(*leaves, cu, cu, max(lens), max(lens), window=1000, keep_first=37)
        out.backward(dout)
        grads.append([t.grad for t in leaves])
    for first, second in zip(*grads):
        assert torch.equal(first, second)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("lens", [[32768], [4096] * 4, [3000, 9000, 1500]])
def test_real_size_full_causal_varlen(lens):
    """Full-attention layers through SDPA at real sizes, bf16, GQA 4."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(sum(lens), h, 128, generator=g).to(DEVICE, torch.bfloat16) for h in (8, 2, 2))
    cu = _cu(lens)
    got = full_causal_varlen(q, k, v, cu).float()
    want = swaa_attn_varlen_ref(q.float(), k.float(), v.float(), cu, cu, max(lens), max(lens))
    assert (got - want).norm() <= TOLERANCE[torch.bfloat16] * want.norm()
