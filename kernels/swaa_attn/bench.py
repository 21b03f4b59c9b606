"""Benchmark: the SWAA Triton kernel vs FlexAttention (same mask) vs SDPA full causal.

    python -m swaa_attn.bench [--out table.md] [--sweep] [--cases 32k,8x4k,128k]

One process, one table: forward and forward+backward time (median of triton.testing.do_bench),
TFLOP/s counted on the pairs the SWAA mask keeps visible (so full causal attention gets no
credit for the pairs it computes beyond them), and peak memory above the inputs. Needs CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from .dense import full_causal_varlen
from .ops import select_config, swaa_attn_varlen_triton

HQ, HKV, HEAD_DIM = 32, 8, 128
WINDOW, KEEP_FIRST, FA_DECODE_TOKENS = 2048, 100, 1024
CASES = {  # name: (document lengths, forward only)
    "32k": ([32768], False),
    "8x4k": ([4096] * 8, False),
    "128k": ([131072], True),
}


def visible_pairs(lens, window, keep_first, full_from):
    """Pairs (i, j) the SWAA mask keeps, summed over documents (q_len == k_len)."""
    total = 0
    for n, ff in zip(lens, full_from):
        i = torch.arange(n, dtype=torch.float64)
        swa = torch.minimum(i + 1, torch.tensor(float(window))) + (torch.minimum(
            torch.tensor(float(keep_first)), i + 1 - window)).clamp(min=0)
        total += torch.where(i >= ff, i + 1, swa).sum().item()
    return total


def make_inputs(lens, dtype=torch.bfloat16, seed=0):
    torch.manual_seed(seed)
    total = sum(lens)
    q = torch.randn(total, HQ, HEAD_DIM, device="cuda", dtype=dtype)
    k = torch.randn(total, HKV, HEAD_DIM, device="cuda", dtype=dtype)
    v = torch.randn(total, HKV, HEAD_DIM, device="cuda", dtype=dtype)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    full_from = torch.tensor([n - FA_DECODE_TOKENS for n in lens], dtype=torch.int32, device="cuda")
    return q, k, v, cu, full_from


def ours(q, k, v, cu, full_from, lens, config=None):
    return swaa_attn_varlen_triton(q, k, v, cu, cu, max(lens), max(lens), window=WINDOW, keep_first=KEEP_FIRST,
                                   full_from=full_from, config=config)


def flex_setup(lens, full_from):
    """Compiled flex_attention and a block mask for the document + SWAA mask."""
    total = sum(lens)
    starts = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()[:-1]], device="cuda")
    doc = torch.repeat_interleave(torch.arange(len(lens), device="cuda"), torch.tensor(lens, device="cuda"))
    pos = torch.arange(total, device="cuda") - starts[doc]
    limit = full_from.long()[doc]

    def mask_mod(b, h, q_idx, kv_idx):
        i, j = pos[q_idx], pos[kv_idx]
        return (doc[q_idx] == doc[kv_idx]) & (j <= i) & (
            (i - j < WINDOW) | (j < KEEP_FIRST) | (i >= limit[q_idx]))

    block_mask = create_block_mask(mask_mod, 1, 1, total, total, device="cuda", _compile=True)
    flex = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v):  # (1, H, T, D)
        return flex(q, k, v, block_mask=block_mask, enable_gqa=True)

    return run


def sdpa_causal(q, k, v):
    """Full causal attention per document, q/k/v as (docs, H, T, D) with k/v already repeated."""
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def measure(fn, inputs, backward):
    """(median ms, peak MiB above what was allocated before) of fn(*inputs) [+ its backward]."""
    if backward:
        inputs = [t.detach().requires_grad_() for t in inputs]
        grad = torch.randn_like(fn(*inputs))

        def step():
            torch.autograd.grad(fn(*inputs), inputs, grad)
    else:
        def step():
            with torch.no_grad():
                fn(*inputs)
    step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    ms = triton.testing.do_bench(step, warmup=50, rep=300, return_mode="median")
    return ms, peak


def bench_case(name, rows, config=None):
    lens, fwd_only = CASES[name]
    q, k, v, cu, full_from = make_inputs(lens)
    flops_fwd = 4 * HEAD_DIM * HQ * visible_pairs(lens, WINDOW, KEEP_FIRST, full_from.tolist())
    docs, n = len(lens), lens[0]
    as_bhtd = lambda t: t.transpose(0, 1).unsqueeze(0).contiguous()
    flex = flex_setup(lens, full_from)
    qf, kf, vf = as_bhtd(q), as_bhtd(k), as_bhtd(v)
    # SDPA full causal per document: (docs, H, n, D); k/v repeated to Hq heads outside the timing.
    per_doc = lambda t: t.view(docs, n, t.shape[1], HEAD_DIM).transpose(1, 2).contiguous()
    qs = per_doc(q)
    ks = per_doc(k).repeat_interleave(HQ // HKV, dim=1)
    vs = per_doc(v).repeat_interleave(HQ // HKV, dim=1)

    with torch.no_grad():
        diff = (ours(q, k, v, cu, full_from, lens, config).transpose(0, 1).unsqueeze(0).float() - flex(qf, kf, vf).float())
    max_diff = diff.abs().max().item()
    del diff
    methods = [
        ("swaa_attn (Triton)", lambda q_, k_, v_: ours(q_, k_, v_, cu, full_from, lens, config), (q, k, v)),
        ("FlexAttention, same mask", flex, (qf, kf, vf)),
        ("SDPA full causal per doc", sdpa_causal, (qs, ks, vs)),
    ]
    for label, fn, inputs in methods:
        fwd_ms, fwd_mem = measure(fn, inputs, backward=False)
        row = dict(case=name, method=label, fwd_ms=fwd_ms, fwd_tflops=flops_fwd / fwd_ms * 1e-9, fwd_mem=fwd_mem)
        if not fwd_only:
            fb_ms, fb_mem = measure(fn, inputs, backward=True)
            row.update(fb_ms=fb_ms, fb_tflops=3.5 * flops_fwd / fb_ms * 1e-9, fb_mem=fb_mem)
        rows.append(row)
        print(format_row(row), flush=True)
    print(f"{name}: max |swaa_attn - flex| on the output = {max_diff:.3g}", flush=True)
    del q, k, v, qf, kf, vf, qs, ks, vs
    torch.cuda.empty_cache()


def bench_full_layer(name, rows, config=None):
    """A full-attention layer (window None) on `name`'s documents: the routes swaa_attn_varlen_func can take.

    Causal pairs are counted for TFLOP/s. The SDPA routes include repeating k/v (or not) in the timing.
    """
    lens, fwd_only = CASES[name]
    q, k, v, cu, _ = make_inputs(lens)
    flops_fwd = 4 * HEAD_DIM * HQ * sum(n * (n + 1) / 2 for n in lens)
    routes = [
        ("full layer: swaa_attn (Triton)", lambda q_, k_, v_: swaa_attn_varlen_triton(
            q_, k_, v_, cu, cu, max(lens), max(lens), config=config)),
        ("full layer: SDPA, k/v repeated", lambda q_, k_, v_: full_causal_varlen(q_, k_, v_, cu, repeat_kv=True)),
        ("full layer: SDPA, enable_gqa", lambda q_, k_, v_: full_causal_varlen(q_, k_, v_, cu, repeat_kv=False)),
    ]
    for label, fn in routes:
        try:
            fwd_ms, fwd_mem = measure(fn, (q, k, v), backward=False)
            row = dict(case=name, method=label, fwd_ms=fwd_ms, fwd_tflops=flops_fwd / fwd_ms * 1e-9, fwd_mem=fwd_mem)
            if not fwd_only:
                fb_ms, fb_mem = measure(fn, (q, k, v), backward=True)
                row.update(fb_ms=fb_ms, fb_tflops=3.5 * flops_fwd / fb_ms * 1e-9, fb_mem=fb_mem)
        except RuntimeError as error:  # a backend that refuses the shape
            print(f"{name} {label}: {str(error).splitlines()[0]}", flush=True)
            continue
        rows.append(row)
        print(format_row(row), flush=True)
    del q, k, v
    torch.cuda.empty_cache()


HEADER = ("| case | attention | fwd ms | fwd TFLOP/s | fwd peak MiB | fwd+bwd ms | fwd+bwd TFLOP/s | "
          "fwd+bwd peak MiB |\n| --- | --- | --- | --- | --- | --- | --- | --- |")


def format_row(r):
    fb = (f"{r['fb_ms']:.2f} | {r['fb_tflops']:.0f} | {r['fb_mem']:.0f}" if "fb_ms" in r else "- | - | -")
    return f"| {r['case']} | {r['method']} | {r['fwd_ms']:.2f} | {r['fwd_tflops']:.0f} | {r['fwd_mem']:.0f} | {fb} |"


SWEEP_FWD = [  # BLOCK_M, BLOCK_N, num_warps, num_stages, warp_specialize
    (128, 64, 8, 3, False), (128, 128, 8, 3, False), (128, 64, 8, 2, False), (64, 64, 4, 3, False),
    (128, 64, 8, 3, True), (128, 128, 8, 3, True), (128, 64, 4, 3, True),
]
SWEEP_BWD = [  # dK/dV BLOCK_M, BLOCK_N; dQ BLOCK_M, BLOCK_N; num_warps, num_stages, warp_specialize
    (64, 128, 128, 64, 8, 2, False), (64, 128, 128, 64, 8, 3, False), (32, 128, 128, 32, 8, 3, False),
    (64, 128, 128, 32, 8, 2, False), (32, 64, 64, 32, 4, 4, False), (64, 128, 128, 64, 8, 2, True),
]


def sweep():
    """Time the 32k case under other tile configurations; return the fastest (fwd, then bwd)."""
    lens = CASES["32k"][0]
    q, k, v, cu, full_from = make_inputs(lens)
    best = select_config(HEAD_DIM)
    print(f"default config: {best}", flush=True)
    with torch.no_grad():
        want = ours(q, k, v, cu, full_from, lens, best).float()
    fn = lambda cfg: (lambda q_, k_, v_: ours(q_, k_, v_, cu, full_from, lens, cfg))

    def trial(cfg, backward, label):
        try:
            with torch.no_grad():
                err = (ours(q, k, v, cu, full_from, lens, cfg).float() - want).abs().max().item()
            if not err < 0.05:
                print(f"sweep {label}: wrong output (max diff {err:.3g})", flush=True)
                return math.inf
            ms, _ = measure(fn(cfg), (q, k, v), backward=backward)
            print(f"sweep {label}: {ms:.3f} ms", flush=True)
            return ms
        except Exception as e:  # out of shared memory / registers, unsupported option
            print(f"sweep {label}: failed {type(e).__name__}: {str(e)[:160]}", flush=True)
            return math.inf

    results = []
    for bm, bn, w, s, ws in SWEEP_FWD:
        cfg = dataclasses.replace(best, block_m=bm, block_n=bn, fwd_warps=w, fwd_stages=s, fwd_warp_specialize=ws)
        results.append((trial(cfg, False, f"fwd BLOCK_M={bm} BLOCK_N={bn} warps={w} stages={s} ws={ws}"), cfg))
    best = min(results, key=lambda r: r[0])[1]
    results = []
    for m1, n1, m2, n2, w, s, ws in SWEEP_BWD:
        cfg = dataclasses.replace(best, block_m1=m1, block_n1=n1, block_m2=m2, block_n2=n2, bwd_warps=w,
                                  bwd_stages=s, bwd_warp_specialize=ws)
        label = f"fwd+bwd M1={m1} N1={n1} M2={m2} N2={n2} warps={w} stages={s} ws={ws}"
        results.append((trial(cfg, True, label), cfg))
    best = min(results, key=lambda r: r[0])[1]
    print(f"fastest config: {best}", flush=True)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.add_argument("--sweep", action="store_true",
                        help="first time other tile configurations on the 32k case; the table uses the fastest")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    parser.add_argument("--full-layer", action="store_true",
                        help="also time a full-attention layer (window None) on each case: Triton vs SDPA routes")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("swaa_attn.bench needs CUDA")
    config = sweep() if args.sweep else None
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"Hq={HQ} Hkv={HKV} D={HEAD_DIM} bf16, window {WINDOW}, keep_first {KEEP_FIRST}, "
          f"last {FA_DECODE_TOKENS} tokens of each document FA decode", flush=True)
    rows = []
    for name in args.cases.split(","):
        bench_case(name, rows, config)
        if args.full_layer:
            bench_full_layer(name, rows, config)
    table = "\n".join([HEADER, *map(format_row, rows)])
    print("\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
