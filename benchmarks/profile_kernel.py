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
    largest stall reasons of each kind. Reads `ncu --page source --csv --print-source sass`."""
    text = open(path, encoding="utf-8").read().splitlines()
    # The CSV holds one block per kernel, each preceded by a line naming the kernel.
    blocks, name, rows = [], None, []
    for line in text:
        if line.startswith('"#"') or line.startswith('"Address"') or line.startswith("#") and "," in line[:12]:
            rows.append(line)
        elif line.strip() and not line.startswith('"'):
            if rows:
                blocks.append((name, rows))
            name, rows = line.strip(), []
        else:
            rows.append(line)
    if rows:
        blocks.append((name, rows))
    out = []
    for name, lines in blocks:
        reader = csv.DictReader(lines)
        if not reader.fieldnames or "Source" not in reader.fieldnames:
            continue
        sample_col = next((f for f in reader.fieldnames if f.startswith("Warp Stall Sampling (All")), None)
        if sample_col is None:
            continue
        stall_cols = [
            f for f in reader.fieldnames if f.startswith("stall_") or f.startswith("smsp__pcsamp_warps_issue_stalled")
        ]
        per_kind = defaultdict(float)
        per_stall = defaultdict(lambda: defaultdict(float))
        total = 0.0
        for row in reader:
            opcode = (row["Source"].strip().split() or [""])[0]
            if opcode.startswith("@"):  # predicated: the opcode is the next word
                opcode = (row["Source"].strip().split() + ["", ""])[1]
            samples = float(row.get(sample_col) or 0)
            kind = kind_of(opcode)
            per_kind[kind] += samples
            total += samples
            for col in stall_cols:
                per_stall[kind][col] += float(row.get(col) or 0)
        if not total:
            continue
        out.append(
            f"### {name}\n\n| instruction kind | share of warp samples | largest stall reasons |\n| --- | --- | --- |"
        )
        for kind, samples in sorted(per_kind.items(), key=lambda kv: -kv[1]):
            top = sorted(per_stall[kind].items(), key=lambda kv: -kv[1])[:3]
            reasons = ", ".join(
                f"{c.split('stalled_')[-1].removeprefix('stall_')} {v / samples:.0%}" for c, v in top if v
            )
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
