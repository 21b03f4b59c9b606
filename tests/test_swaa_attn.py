"""swaa_attn's Triton kernel against its PyTorch reference (naive.py): outputs and dq, dk, dv.

Without CUDA the kernel runs on CPU tensors under the Triton interpreter, which this module
switches on for its own tests only (other modules keep the reference path); shapes stay
small. With CUDA the same grid runs compiled, bf16 included, and the tests marked gpu run
at real sizes. Every kernel output is allocated NaN-filled, so an element the kernel never
writes fails the comparison.
"""

from __future__ import annotations

import importlib
import math
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swaa_attn import swaa_attn_varlen_func, swaa_attn_varlen_ref

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
# tl.dot on bf16 operands is wrong under the triton 3.9 interpreter: bf16 runs compiled only.
DTYPES = (torch.float32, torch.float16) + ((torch.bfloat16,) if HAS_CUDA else ())
# Relative error bounds: on the norm of the difference, and on its largest element.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.fixture(scope="module", autouse=True)
def triton_backend():
    """Interpreter for this module's tests when there is no GPU; the kernel module is
    (re)imported under that setting, since Triton reads it when kernels are defined."""
    patch = pytest.MonkeyPatch()
    if not HAS_CUDA:
        patch.setenv("TRITON_INTERPRET", "1")
        if "swaa_attn.ops" in sys.modules:
            importlib.reload(sys.modules["swaa_attn.ops"])
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def triton_for_full_layers(monkeypatch):
    """Full-attention calls (window None) go to SDPA on CUDA by default; these tests are about the kernel."""
    monkeypatch.setenv("SWAA_ATTN_FULL_BACKEND", "triton")


@pytest.fixture(autouse=True)
def nan_poisoned_outputs(monkeypatch):
    """Every floating tensor from torch.empty / empty_like starts as NaN (the kernel's outputs)."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(math.nan) if t.is_floating_point() and not t.requires_grad else t

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poison(real_empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poison(real_empty_like(*a, **kw)))


def _cu(lens):
    return torch.tensor([0, *torch.tensor(lens, dtype=torch.long).cumsum(0).tolist()], dtype=torch.int32,
                        device=DEVICE)


def run_and_compare(lens_q, lens_k, *, hq=2, hkv=1, head_dim=64, dtype=torch.float32, window=None,
                    keep_first=0, full_from=None, softmax_scale=None, seed=0, config=None, tol=None):
    """Kernel vs reference on random inputs: output and the three gradients."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype)

    q, k, v = rand(sum(lens_q), hq, head_dim), rand(sum(lens_k), hkv, head_dim), rand(sum(lens_k), hkv, head_dim)
    dout = rand(sum(lens_q), hq, head_dim)
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    ff = None if full_from is None else torch.tensor(full_from, dtype=torch.int32, device=DEVICE)
    args = (cu_q, cu_k, max(lens_q, default=0), max(lens_k, default=0))
    kwargs = dict(window=window, keep_first=keep_first, full_from=ff, softmax_scale=softmax_scale)

    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    if config is None:
        out = swaa_attn_varlen_func(*inputs, *args, **kwargs)
    else:
        from swaa_attn.ops import swaa_attn_varlen_triton

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


@pytest.mark.parametrize("full_from", [
    None,
    [0] * len(PACK),
    [20, 0, 50, 1, 33],
    [1000, 5, 200, 1, 64],
    [37, 1, 99, 0, 70],
])
@pytest.mark.parametrize("window,keep_first", [(16, 3), (5, 40)])
def test_pack_full_from(full_from, window, keep_first):
    run_and_compare(PACK, PACK, window=window, keep_first=keep_first, full_from=full_from)


# Fewer queries than keys (decoding, chunked prefill), bottom-right aligned; 0-query sequences.
@pytest.mark.parametrize("lens_q,lens_k,full_from", [
    ([1], [80], None),
    ([1], [80], [79]),
    ([17, 0, 40], [120, 30, 41], None),
    ([17, 0, 40], [120, 30, 41], [110, 3, 20]),
    ([64, 3], [64, 97], [10, 95]),
])
def test_fewer_queries_than_keys(lens_q, lens_k, full_from):
    run_and_compare(lens_q, lens_k, window=20, keep_first=5, full_from=full_from)


@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gqa_and_head_dim(group, head_dim):
    run_and_compare([70, 45], [70, 45], hq=group, hkv=1, head_dim=head_dim, window=24, keep_first=3,
                    full_from=[50, 100], seed=group)


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
    got = swaa_attn_varlen_func(q, k, v, cu, cu, 50, 50, window=9, keep_first=2)
    want = swaa_attn_varlen_ref(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, 50, 50, window=9, keep_first=2)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block_m,block_n,block_m1,block_n1,block_m2,block_n2", [
    (16, 16, 16, 16, 16, 16),
    (16, 64, 64, 16, 16, 32),
    (64, 16, 16, 32, 32, 16),
])
def test_tile_shapes(block_m, block_n, block_m1, block_n1, block_m2, block_n2):
    """The tile-skipping arithmetic must hold for any ratio of query to key tiles."""
    from swaa_attn.ops import KernelConfig

    cfg = KernelConfig(block_m=block_m, block_n=block_n, block_m1=block_m1, block_n1=block_n1,
                       block_m2=block_m2, block_n2=block_n2)
    run_and_compare([100, 1, 50], [130, 1, 50], window=13, keep_first=21, full_from=[90, 0, 25], config=cfg)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_configs(data):
    n_seq = data.draw(st.integers(1, 3), label="n_seq")
    lens_k = data.draw(st.lists(st.integers(1, 90), min_size=n_seq, max_size=n_seq), label="lens_k")
    lens_q = [data.draw(st.integers(0, lk), label="len_q") for lk in lens_k]
    window = data.draw(st.one_of(st.none(), st.integers(1, 100)), label="window")
    keep_first = data.draw(st.integers(0, 40), label="keep_first")
    full_from = data.draw(st.one_of(st.none(), st.lists(st.integers(-5, 110), min_size=n_seq, max_size=n_seq)),
                          label="full_from")
    group = data.draw(st.sampled_from([1, 2, 4]), label="group")
    if sum(lens_q) == 0:
        lens_q[0] = 1
    run_and_compare(lens_q, lens_k, hq=group, hkv=1, window=window, keep_first=keep_first, full_from=full_from,
                    seed=data.draw(st.integers(0, 1000), label="seed"))


def _valid_args(**override):
    gen = torch.Generator().manual_seed(0)
    args = dict(
        q=torch.randn(10, 4, 64, generator=gen), k=torch.randn(10, 2, 64, generator=gen),
        v=torch.randn(10, 2, 64, generator=gen), cu_seqlens_q=torch.tensor([0, 4, 10], dtype=torch.int32),
        cu_seqlens_k=torch.tensor([0, 4, 10], dtype=torch.int32), max_seqlen_q=6, max_seqlen_k=6,
        window=3, keep_first=1, full_from=torch.tensor([2, 3], dtype=torch.int32),
    )
    args.update(override)
    return {name: t.to(DEVICE) if isinstance(t, torch.Tensor) else t for name, t in args.items()}


@pytest.mark.parametrize("override,match", [
    (dict(q=torch.randn(10, 4, 32)), "head_dim"),
    (dict(k=torch.randn(10, 3, 64), v=torch.randn(10, 3, 64)), "multiple of k heads"),
    (dict(v=torch.randn(10, 2, 32)), "k and v"),
    (dict(q=torch.randn(10, 4, 64).half()), "dtype"),
    (dict(q=torch.randn(10, 4, 64).double()), "q has dtype"),
    (dict(q=torch.randn(10, 4)), "q must be"),
    (dict(cu_seqlens_q=torch.tensor([0, 4, 10])), "cu_seqlens_q"),
    (dict(cu_seqlens_k=torch.tensor([1, 4, 10], dtype=torch.int32)), "cu_seqlens_k must start at 0"),
    (dict(cu_seqlens_q=torch.tensor([0, 6, 4, 10], dtype=torch.int32),
          cu_seqlens_k=torch.tensor([0, 6, 4, 10], dtype=torch.int32), full_from=None), "non-decreasing"),
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
])
def test_bad_inputs_name_the_argument(override, match):
    args = _valid_args(**override)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    positional = [args.pop(n) for n in ("cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k")]
    with pytest.raises(ValueError, match=match):
        swaa_attn_varlen_func(q, k, v, *positional, **args)


def test_queries_beyond_keys_rejected():
    args = _valid_args(cu_seqlens_k=torch.tensor([0, 2, 10], dtype=torch.int32), max_seqlen_k=8)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    positional = [args.pop(n) for n in ("cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k")]
    with pytest.raises(ValueError, match="cu_seqlens_q: sequence 0"):
        swaa_attn_varlen_func(q, k, v, *positional, **args)


# ---------------------------------------------------------------------------------------------
# Full-attention layers through SDPA (swaa_attn.dense)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def sdpa_calls(monkeypatch):
    """Counts the calls that take the SDPA route."""
    from swaa_attn import dense

    calls, real = [], dense.full_causal_varlen
    monkeypatch.setattr(dense, "full_causal_varlen", lambda *a, **kw: calls.append(a[3].tolist()) or real(*a, **kw))
    return calls


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lens, hkv", [([40], 1), ([40], 2), ([16, 16, 16], 4)])
@pytest.mark.parametrize("repeat_kv", [False, True])
def test_full_layers_through_sdpa(monkeypatch, sdpa_calls, dtype, lens, hkv, repeat_kv):
    monkeypatch.setenv("SWAA_ATTN_FULL_BACKEND", "sdpa")
    monkeypatch.setattr("swaa_attn.dense.REPEAT_KV", repeat_kv)
    run_and_compare(lens, lens, hq=4, hkv=hkv, head_dim=32, dtype=dtype, softmax_scale=0.2)
    assert sdpa_calls == [_cu(lens).tolist()]


@pytest.mark.parametrize("lens", [[13, 5, 22], [7, 0, 9], [0, 0]])
def test_sdpa_full_causal_of_uneven_packs(lens):
    """The per-sequence path of swaa_attn.dense (the training benchmark's full-attention baseline)."""
    from swaa_attn.dense import full_causal_varlen

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(sum(lens), h, 16, generator=g) for h in (4, 2, 2))
    got = full_causal_varlen(q, k, v, _cu(lens).cpu(), 0.3)
    torch.testing.assert_close(got, swaa_attn_varlen_ref(q, k, v, _cu(lens).cpu(), _cu(lens).cpu(), max(lens),
                                                         max(lens), softmax_scale=0.3), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend, call, routed", [
    ("sdpa", dict(), True),
    ("sdpa", dict(window=8), False),  # a sliding-window layer
    ("sdpa", dict(lens_q=[10, 20], lens_k=[20, 20]), False),  # fewer queries than keys (decoding with a cache)
    ("sdpa", dict(lens_q=[3, 5], lens_k=[3, 5]), False),  # uneven pack: one launch per sequence is slower
    ("sdpa", dict(lens_q=[6] * 17, lens_k=[6] * 17), True),  # sequences of one length: one batched call
    ("triton", dict(), False),
    ("auto", dict(), HAS_CUDA),
])
def test_which_calls_take_the_sdpa_route(monkeypatch, sdpa_calls, backend, call, routed):
    monkeypatch.setenv("SWAA_ATTN_FULL_BACKEND", backend)
    lens_q, lens_k = call.get("lens_q", [20, 20]), call.get("lens_k", [20, 20])
    q = torch.randn(sum(lens_q), 2, 16, device=DEVICE)
    k = v = torch.randn(sum(lens_k), 2, 16, device=DEVICE)
    swaa_attn_varlen_func(q, k, v, _cu(lens_q), _cu(lens_k), max(lens_q), max(lens_k), window=call.get("window"))
    assert bool(sdpa_calls) == routed


def test_full_backend_setting_is_checked(monkeypatch):
    monkeypatch.setenv("SWAA_ATTN_FULL_BACKEND", "cudnn")
    q = torch.randn(4, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="SWAA_ATTN_FULL_BACKEND"):
        swaa_attn_varlen_func(q, q, q, _cu([4]), _cu([4]), 4, 4)


# ---------------------------------------------------------------------------------------------
# Real sizes on the GPU
# ---------------------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", [
    # one 32k sequence, SWAA training settings: window 2048, 100 sinks, last 1024 tokens FA decode
    dict(lens_q=[32768], lens_k=[32768], hq=8, hkv=2, head_dim=128, dtype=torch.bfloat16, window=2048,
         keep_first=100, full_from=[32768 - 1024]),
    # pack of 8 x 4k documents, each with its own FA-decode region
    dict(lens_q=[4096] * 8, lens_k=[4096] * 8, hq=8, hkv=2, head_dim=128, dtype=torch.bfloat16, window=2048,
         keep_first=100, full_from=[3072, 0, 4096, 2000, 3072, 17, 5000, 3072]),
    # uneven pack, head dim 64, fp16, GQA 4
    dict(lens_q=[9000, 1, 3000, 777, 5000], lens_k=[9000, 1, 3000, 777, 5000], hq=8, hkv=2, head_dim=64,
         dtype=torch.float16, window=1000, keep_first=37, full_from=[8000, 0, 2999, 100, 10000]),
    # chunked prefill: 4k queries against 16k keys, GQA 8
    dict(lens_q=[4096, 512], lens_k=[16384, 2048], hq=8, hkv=1, head_dim=128, dtype=torch.bfloat16, window=4096,
         keep_first=64, full_from=[15000, 1024]),
    # full attention (window None) at 16k, fp32 exact products
    dict(lens_q=[16384], lens_k=[16384], hq=2, hkv=1, head_dim=64, dtype=torch.float32, window=None),
], ids=["32k", "8x4k", "uneven-d64-fp16", "chunked-prefill", "full-16k-fp32"])
def test_real_sizes(case):
    run_and_compare(**case)


@pytest.mark.gpu
@gpu
def test_real_size_full_layer_through_sdpa(monkeypatch, sdpa_calls):
    """The recipe's full-attention layers on CUDA: one 32k document and a pack of 4 x 4k, bf16, GQA 4."""
    monkeypatch.setenv("SWAA_ATTN_FULL_BACKEND", "auto")
    run_and_compare([32768], [32768], hq=8, hkv=2, head_dim=128, dtype=torch.bfloat16)
    run_and_compare([4096] * 4, [4096] * 4, hq=8, hkv=2, head_dim=128, dtype=torch.bfloat16)
    assert len(sdpa_calls) == 2
