"""Benchmark: the SWAA Triton kernel vs FlexAttention (same mask) vs torch SDPA full causal (cuDNN).

    python benchmarks/bench_kernel.py [--out table.md] [--cases 32k,8x4k,...] [--sweep]

One process, one table: forward and forward+backward time (median of triton.testing.do_bench),
TFLOP/s counted on the pairs the SWAA mask keeps visible (`swaa_attn.visible_pairs`, so full
causal attention gets no credit for the pairs it computes beyond them), and peak memory above
the inputs. SDPA runs full causal attention over the same documents: one batched call when they
share one length, one call per document otherwise; k/v are repeated to the query heads outside
the timing. Needs CUDA; imports swaa_attn as a user would (PYTHONPATH=kernels from a checkout).
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

from swaa_attn import visible_pairs_varlen
from swaa_attn.ops import KernelConfig, swaa_attn_varlen_triton


@dataclasses.dataclass(frozen=True)
class Case:
    lens: list[int]
    hq: int = 32
    hkv: int = 8
    head_dim: int = 128
    window: int = 2048
    keep_first: int = 100
    fa_decode: int | None = 1024  # the last tokens of each document attend fully; None: no FA decode
    fwd_only: bool = False


CASES = {
    "32k": Case([32768]),
    "8x4k": Case([4096] * 8),
    "128k": Case([131072], fwd_only=True),
    "uneven": Case([18432, 1536, 6144, 11264], hq=40, hkv=8, window=4096, keep_first=64),
    "d64": Case([16384], hq=16, hkv=2, head_dim=64, window=1024, keep_first=0, fa_decode=None),
}
UNBOUNDED = 1 << 30
DEVICE = "cuda"


def describe(name: str, case: Case) -> str:
    decode = f"last {case.fa_decode} tokens FA decode" if case.fa_decode else "no FA decode"
    docs = f"{len(case.lens)} x {case.lens[0]}" if len(set(case.lens)) == 1 else "+".join(map(str, case.lens))
    return (
        f"{name}: {docs} tokens, {case.hq}/{case.hkv} heads, D {case.head_dim}, window {case.window}, "
        f"sinks {case.keep_first}, {decode}"
    )


def make_inputs(case: Case, seed=0):
    torch.manual_seed(seed)
    total = sum(case.lens)
    q = torch.randn(total, case.hq, case.head_dim, device=DEVICE, dtype=torch.bfloat16)
    k = torch.randn(total, case.hkv, case.head_dim, device=DEVICE, dtype=torch.bfloat16)
    v = torch.randn(total, case.hkv, case.head_dim, device=DEVICE, dtype=torch.bfloat16)
    cu = torch.tensor([0, *torch.tensor(case.lens).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    limits = [n - case.fa_decode if case.fa_decode else UNBOUNDED for n in case.lens]
    full_from = torch.tensor(limits, dtype=torch.int32, device=DEVICE)
    return q, k, v, cu, full_from


def ours(case, q, k, v, cu, full_from, config=None):
    n = max(case.lens)
    return swaa_attn_varlen_triton(
        q, k, v, cu, cu, n, n, window=case.window, keep_first=case.keep_first, full_from=full_from, config=config
    )


def flex_setup(case, full_from):
    """Compiled flex_attention and a block mask for the document + SWAA mask."""
    lens = case.lens
    total = sum(lens)
    starts = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()[:-1]], device=DEVICE)
    doc = torch.repeat_interleave(torch.arange(len(lens), device=DEVICE), torch.tensor(lens, device=DEVICE))
    pos = torch.arange(total, device=DEVICE) - starts[doc]
    limit = full_from.long()[doc]
    window, keep_first = case.window, case.keep_first

    def mask_mod(b, h, q_idx, kv_idx):
        i, j = pos[q_idx], pos[kv_idx]
        return (doc[q_idx] == doc[kv_idx]) & (j <= i) & ((i - j < window) | (j < keep_first) | (i >= limit[q_idx]))

    block_mask = create_block_mask(mask_mod, 1, 1, total, total, device=DEVICE, _compile=True)
    flex = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v):  # (1, H, T, D)
        return flex(q, k, v, block_mask=block_mask, enable_gqa=True)

    return run


def sdpa_setup(case, q, k, v):
    """SDPA full causal (cuDNN first) over the documents, and its inputs: one (docs, H, n, D) batch when
    the documents share one length, else one (1, H, n, D) triple per document."""
    group = case.hq // case.hkv
    heads_first = lambda t, rep: t.transpose(0, 1).repeat_interleave(rep, 0)
    pieces = [
        (heads_first(q[s:e], 1), heads_first(k[s:e], group), heads_first(v[s:e], group))
        for s, e in zip([0, *torch.tensor(case.lens).cumsum(0).tolist()[:-1]], torch.tensor(case.lens).cumsum(0))
    ]
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    if len(set(case.lens)) == 1:
        inputs = tuple(torch.stack([p[i] for p in pieces]).contiguous() for i in range(3))

        def run(q, k, v):
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        return run, inputs, "SDPA full causal, one batched call"
    inputs = tuple(t[None].contiguous() for p in pieces for t in p)

    def run(*tensors):
        with sdpa_kernel(backends):
            return torch.cat(
                [
                    F.scaled_dot_product_attention(*tensors[i : i + 3], is_causal=True)
                    for i in range(0, len(tensors), 3)
                ],
                dim=2,
            )

    return run, inputs, "SDPA full causal, per document"


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
    ms = triton.testing.do_bench(step, warmup=25, rep=200, return_mode="median")
    return ms, peak


def bench_case(name, rows, config=None):
    case = CASES[name]
    q, k, v, cu, full_from = make_inputs(case)
    pairs = visible_pairs_varlen(cu, cu, window=case.window, keep_first=case.keep_first, full_from=full_from)
    flops_fwd = 4 * case.head_dim * case.hq * pairs
    floor_ms = flops_fwd / 780e9
    as_bhtd = lambda t: t.transpose(0, 1).unsqueeze(0).contiguous()
    flex = flex_setup(case, full_from)
    qf, kf, vf = as_bhtd(q), as_bhtd(k), as_bhtd(v)
    sdpa, sdpa_inputs, sdpa_label = sdpa_setup(case, q, k, v)
    with torch.no_grad():
        ref = flex(qf, kf, vf).float()
        max_diff = (ours(case, q, k, v, cu, full_from, config).transpose(0, 1).unsqueeze(0).float() - ref).abs().max()
    del ref
    print(
        f"{describe(name, case)}; visible pairs {pairs / 1e6:.1f}M per head; floor (780 TFLOP/s) "
        f"{floor_ms:.2f} ms fwd, {3.5 * floor_ms:.2f} ms fwd+bwd; max |swaa_attn - flex| {max_diff.item():.3g}",
        flush=True,
    )
    methods = [
        ("swaa_attn (Triton)", lambda q_, k_, v_: ours(case, q_, k_, v_, cu, full_from, config), (q, k, v)),
        ("FlexAttention, same mask", flex, (qf, kf, vf)),
        (sdpa_label, sdpa, sdpa_inputs),
    ]
    for label, fn, inputs in methods:
        fwd_ms, fwd_mem = measure(fn, inputs, backward=False)
        row = dict(case=name, method=label, fwd_ms=fwd_ms, fwd_tflops=flops_fwd / fwd_ms * 1e-9, fwd_mem=fwd_mem)
        if not case.fwd_only:
            fb_ms, fb_mem = measure(fn, inputs, backward=True)
            row.update(fb_ms=fb_ms, fb_tflops=3.5 * flops_fwd / fb_ms * 1e-9, fb_mem=fb_mem)
        rows.append(row)
        print(format_row(row), flush=True)
    del q, k, v, qf, kf, vf, sdpa_inputs
    torch.cuda.empty_cache()


HEADER = (
    "| case | attention | fwd ms | fwd TFLOP/s | fwd peak MiB | fwd+bwd ms | fwd+bwd TFLOP/s | "
    "fwd+bwd peak MiB |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def format_row(r):
    fb = f"{r['fb_ms']:.2f} | {r['fb_tflops']:.0f} | {r['fb_mem']:.0f}" if "fb_ms" in r else "- | - | -"
    return f"| {r['case']} | {r['method']} | {r['fwd_ms']:.2f} | {r['fwd_tflops']:.0f} | {r['fwd_mem']:.0f} | {fb} |"


def _tiles(m, n, w, s, **flags):
    return {"block_m": m, "block_n": n, "fwd_warps": w, "fwd_stages": s, **flags}


def _bwd(m1, n1, w, s, m2=128, n2=64, **flags):
    return {"block_m1": m1, "block_n1": n1, "block_m2": m2, "block_n2": n2, "bwd_warps": w, "bwd_stages": s, **flags}


# Per padded head dim: forward variants, then backward variants (timed forward+backward with the fastest
# forward). The first of each is the previous default, the reference of the correctness check.
SWEEP = {
    128: (
        {
            "ptr 128x128 w8 s3": _tiles(128, 128, 8, 3),
            "tma 128x128 w8 s3": _tiles(128, 128, 8, 3, fwd_tma=True),
            "tma 128x64 w8 s3": _tiles(128, 64, 8, 3, fwd_tma=True),
            "tma 64x64 w4 s2": _tiles(64, 64, 4, 2, fwd_tma=True),  # two programs fit on one SM
            "tma 64x64 w4 s3": _tiles(64, 64, 4, 3, fwd_tma=True),
        },
        {
            "ptr 2 kernels 64x128 w8 s3": _bwd(64, 128, 8, 3),
            "tma 2 kernels 32x128 w8 s2": _bwd(32, 128, 8, 2, bwd_tma=True),
            "tma fused 32x128 w8 s2": _bwd(32, 128, 8, 2, bwd_tma=True, bwd_fused=True),
            "tma fused 32x128 w8 s3 dq-tma": _bwd(32, 128, 8, 3, bwd_tma=True, bwd_fused=True, dq_tma=True),
        },
    ),
    64: (
        {
            "ptr 128x64 w4 s3": _tiles(128, 64, 4, 3),
            "tma 128x128 w8 s3": _tiles(128, 128, 8, 3, fwd_tma=True),
            "tma 128x64 w4 s3": _tiles(128, 64, 4, 3, fwd_tma=True),
            "tma 64x128 w4 s3": _tiles(64, 128, 4, 3, fwd_tma=True),
            "tma 64x64 w4 s3": _tiles(64, 64, 4, 3, fwd_tma=True),
        },
        {
            "ptr 2 kernels 64x128 w4 s3": _bwd(64, 128, 4, 3),
            "tma fused 32x128 w8 s3": _bwd(32, 128, 8, 3, bwd_tma=True, bwd_fused=True),
            "tma fused 32x128 w8 s3 dq-tma": _bwd(32, 128, 8, 3, bwd_tma=True, bwd_fused=True, dq_tma=True),
            "tma 2 kernels 32x128 w8 s2": _bwd(32, 128, 8, 2, bwd_tma=True),
        },
    ),
}
BASE = KernelConfig()  # every field the variants leave alone


def _run(case, cfg, q, k, v, cu, full_from, grad=None):
    """Output (and q, k, v gradients when grad is given) of the kernel under cfg."""
    if grad is None:
        with torch.no_grad():
            return [ours(case, q, k, v, cu, full_from, cfg)]
    inputs = [t.detach().requires_grad_() for t in (q, k, v)]
    out = ours(case, *inputs, cu, full_from, cfg)
    return [out, *torch.autograd.grad(out, inputs, grad)]


def _error(got, want):
    """Largest relative error (norm of the difference over the norm) over the tensors."""
    return max(((g.float() - w.float()).norm() / w.float().norm()).item() for g, w in zip(got, want))


def sweep(name: str, rows: list, forward_only: bool = False) -> KernelConfig:
    """Time `name` under the variants of its head dim; return the fastest forward + backward configuration."""
    case = CASES[name]
    fwd_variants, bwd_variants = SWEEP[case.head_dim]
    q, k, v, cu, full_from = make_inputs(case)
    grad = torch.randn_like(q)

    def trial(label, cfg, backward):
        try:
            got = _run(case, cfg, q, k, v, cu, full_from, grad if backward else None)
            err = _error(got, reference[backward])
            if not err < 1e-2:
                print(f"sweep {name} {label}: wrong (relative error {err:.3g})", flush=True)
                return math.inf
            ms, _ = measure(lambda q_, k_, v_: ours(case, q_, k_, v_, cu, full_from, cfg), (q, k, v), backward)
        except Exception as e:  # out of shared memory / registers, an option this triton lacks
            print(f"sweep {name} {label}: failed {type(e).__name__}: {str(e)[:300]}", flush=True)
            return math.inf
        rows.append({"case": name, "variant": label, "pass": "fwd+bwd" if backward else "fwd", "ms": ms, "err": err})
        print(
            f"sweep {name} {'fwd+bwd' if backward else 'fwd'} {label}: {ms:.3f} ms (relative error {err:.2g})",
            flush=True,
        )
        return ms

    first = dataclasses.replace(BASE, **next(iter(fwd_variants.values())), **next(iter(bwd_variants.values())))
    backward = not (case.fwd_only or forward_only)
    reference = {False: _run(case, first, q, k, v, cu, full_from)}
    if backward:
        reference[True] = _run(case, first, q, k, v, cu, full_from, grad)
    times = {label: trial(label, dataclasses.replace(first, **fields), False) for label, fields in fwd_variants.items()}
    best = dataclasses.replace(first, **fwd_variants[min(times, key=times.get)])
    if backward:
        times = {
            label: trial(label, dataclasses.replace(best, **fields), True) for label, fields in bwd_variants.items()
        }
        best = dataclasses.replace(best, **bwd_variants[min(times, key=times.get)])
    print(f"fastest for {name}: {best}", flush=True)
    return best


def _warm_one(name, fields):
    """Compile the kernels of one configuration on a short version of a case (same heads and dims)."""
    case = dataclasses.replace(CASES[name], lens=[2048])
    q, k, v, cu, full_from = make_inputs(case)
    try:
        _run(case, dataclasses.replace(BASE, **fields), q, k, v, cu, full_from, torch.randn_like(q))
    except Exception as e:
        return f"{name} {fields}: {type(e).__name__}: {str(e)[:200]}"
    return None


def _warm_flex(name):
    case = CASES[name]
    q, k, v, cu, full_from = make_inputs(case)
    flex = flex_setup(case, full_from)
    inputs = [t.transpose(0, 1).unsqueeze(0).contiguous().requires_grad_() for t in (q, k, v)]
    out = flex(*inputs)
    if not case.fwd_only:
        out.sum().backward()
    with torch.no_grad():
        flex(*inputs)
    return None


def warm(names, workers=14):
    """Compile every sweep variant and FlexAttention for `names` in parallel processes (Triton and inductor
    keep what they compile in their on-disk caches, so the timing process starts warm)."""
    import concurrent.futures
    import multiprocessing

    jobs = [(_warm_flex, name) for name in names]  # the longest compiles first
    for name in names:
        fwd_variants, bwd_variants = SWEEP[CASES[name].head_dim]
        first = next(iter(fwd_variants.values()))
        jobs += [(_warm_one, name, {**first, **fields}) for fields in bwd_variants.values()]
        jobs += [(_warm_one, name, {**fields, **next(iter(bwd_variants.values()))}) for fields in fwd_variants.values()]
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    with pool:
        futures = [pool.submit(*job) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            try:
                error = future.result()
            except Exception as e:  # a worker that died (out of memory, ...): the timing run compiles it again
                error = f"{type(e).__name__}: {str(e)[:200]}"
            if error:
                print("warm:", error, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    parser.add_argument(
        "--sweep",
        default="",
        help="comma-separated cases whose head dim's variants are timed first; the table's rows of "
        "that head dim use the fastest (e.g. 32k,d64)",
    )
    parser.add_argument("--warm", action="store_true", help="compile the variants and FlexAttention in parallel first")
    parser.add_argument("--warm-only", action="store_true", help="only compile (--warm), time nothing")
    parser.add_argument("--sweep-forward-only", action="store_true", help="sweep the forward variants only")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernel.py needs CUDA")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, bf16", flush=True)
    names, swept = [n for n in args.cases.split(",") if n], [n for n in args.sweep.split(",") if n]
    if args.warm or args.warm_only:
        warm(swept + [n for n in names if n not in swept])
    if args.warm_only:
        return
    sweep_rows, configs = [], {}
    for name in swept:
        configs[CASES[name].head_dim] = sweep(name, sweep_rows, args.sweep_forward_only)
    rows = []
    for name in names:
        bench_case(name, rows, configs.get(CASES[name].head_dim))
    table = "\n".join([HEADER, *map(format_row, rows)])
    sweep_table = "\n".join(
        ["| case | variant | pass | ms | relative error vs first |", "| --- | --- | --- | --- | --- |"]
        + [f"| {r['case']} | {r['variant']} | {r['pass']} | {r['ms']:.3f} | {r['err']:.1e} |" for r in sweep_rows]
    )
    print("\n" + sweep_table + "\n\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(sweep_table + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
