"""Hardware counters for the kernel's tile loops: one forward and one backward of a bench_kernel.py
case, inside a CUDA profiler range, for Nsight Compute to read.

    ncu --profile-from-start off --clock-control none --set full --import-source yes \\
        -k regex:"_fwd_kernel|_bwd_dkdv_kernel|_bwd_dq_kernel" -o swaa32k \\
        python3 benchmarks/profile_kernel.py --case 32k
    ncu -i swaa32k.ncu-rep --page details                              # pipes, stall reasons, occupancy
    ncu -i swaa32k.ncu-rep --page source --csv --print-source sass > sass.csv
    python3 benchmarks/profile_kernel.py --summarize sass.csv          # stall samples per instruction kind

The compile and autotuning-free warm-up run outside the range, so the report holds exactly one
launch of each kernel. --summarize needs no GPU: it folds the per-instruction warp samples of the
source page into instruction kinds (MUFU.EX2 = exp2 on the special-function units, HGMMA = the
tensor-core matmuls, ...) and the stall reasons behind each, per kernel.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict


def run(case_name: str, backward: bool) -> None:
    import torch

    from benchmarks.bench_kernel import CASES, make_inputs, ours

    case = CASES[case_name]
    q, k, v, cu, full_from = make_inputs(case)
    if backward:
        q, k, v = (t.requires_grad_() for t in (q, k, v))

    def step():
        out = ours(case, q, k, v, cu, full_from)
        if backward:
            torch.autograd.grad(out, (q, k, v), torch.ones_like(out))

    step()  # compile outside the profiled range
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


# Opcode families worth telling apart in an attention tile loop.
KINDS = [
    ("exp2 (MUFU)", re.compile(r"^MUFU")),
    ("matmul (HGMMA/HMMA)", re.compile(r"^(HGMMA|HMMA|WARPGROUP)")),
    ("fp32 math (FFMA/FMUL/FADD/FMNMX)", re.compile(r"^(FFMA|FMUL|FADD|FMNMX|FSEL|FSETP)")),
    ("shared/TMA/barrier (LDS/STS/LDSM/UTMA/SYNCS/BAR)", re.compile(r"^(LDS|STS|LDSM|STSM|UTMA|UBLKCP|SYNCS|BAR)")),
    ("global memory (LDG/STG/RED/ATOM)", re.compile(r"^(LDG|STG|RED|ATOM)")),
    (
        "integer/predicate/convert (mask, indices)",
        re.compile(
            r"^(IMAD|IADD|ISETP|LOP|SHF|SEL|LEA|F2F|F2FP|I2F|F2I|PRMT|MOV|VIADD|VIMNMX|IMNMX|PLOP|R2P|P2R|S2R|CS2R|S2UR|UMOV|UIADD|ULDC|ULOP|USHF|UISETP|ULEA|UIMAD|USEL|UPRMT|R2UR)"
        ),
    ),
    ("control (BRA/EXIT/...)", re.compile(r"^(BRA|EXIT|BSYNC|BSSY|WARPSYNC|NOP|YIELD|CALL|RET|DEPBAR|ELECT|VOTE)")),
]


def kind_of(opcode: str) -> str:
    for name, pattern in KINDS:
        if pattern.match(opcode):
            return name
    return "other"


def summarize(path: str) -> str:
    """Markdown: per kernel, the share of warp samples on each instruction kind, and the three
    largest stall reasons of each kind. Reads `ncu --page source --csv --print-source sass`: one
    block per kernel, a `"Kernel Name","<name>"` line, then a header and one row per instruction."""
    blocks: list[tuple[str, list[str]]] = []
    for line in open(path, encoding="utf-8").read().splitlines():
        if line.startswith('"Kernel Name"'):
            blocks.append((next(csv.reader([line]))[1], []))
        elif blocks:
            blocks[-1][1].append(line)
    out = []
    for name, lines in blocks:
        reader = csv.DictReader(lines)
        fields = reader.fieldnames or []
        sample_col = "Warp Stall Sampling (All Samples)"
        if "Source" not in fields or sample_col not in fields:
            continue
        stall_cols = [f for f in fields if f.startswith("stall_") and not f.endswith("(Not Issued)")]
        per_kind: dict[str, float] = defaultdict(float)
        per_stall: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for row in reader:
            words = row["Source"].split()
            words = words[1:] if words and words[0].startswith("@") else words  # predicate guard
            kind = kind_of(words[0] if words else "")
            per_kind[kind] += float(row[sample_col] or 0)
            for col in stall_cols:
                per_stall[kind][col.removeprefix("stall_")] += float(row[col] or 0)
        total = sum(per_kind.values())
        if not total:
            continue
        stalls = defaultdict(float)
        for reasons in per_stall.values():
            for reason, value in reasons.items():
                stalls[reason] += value
        overall = ", ".join(f"{r} {v / total:.0%}" for r, v in sorted(stalls.items(), key=lambda kv: -kv[1])[:6])
        out += [f"### {name}", "", f"All samples: {overall}.", ""]
        out += ["| instruction kind | share of warp samples | largest stall reasons there |", "| --- | --- | --- |"]
        for kind, samples in sorted(per_kind.items(), key=lambda kv: -kv[1]):
            top = sorted(per_stall[kind].items(), key=lambda kv: -kv[1])[:3]
            reasons = ", ".join(f"{reason} {value / samples:.0%}" for reason, value in top if value)
            out.append(f"| {kind} | {samples / total:.1%} | {reasons} |")
        out.append("")
    return "\n".join(out) if out else "no per-instruction warp samples found in " + path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="32k", help="a case of benchmarks/bench_kernel.py (CASES)")
    parser.add_argument("--forward-only", action="store_true", help="profile the forward kernel alone")
    parser.add_argument("--summarize", metavar="SASS_CSV", help="fold an ncu source-page CSV (no GPU needed)")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
    else:
        run(args.case, backward=not args.forward_only)


if __name__ == "__main__":
    main()
