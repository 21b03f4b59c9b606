"""Long-context LoRA training step: full attention vs the SWAA recipe vs all-layers SWA, one table.

    python scripts/bench_train.py                       # Qwen3-4B shape, T = 16k..256k, on CUDA
    python scripts/bench_train.py --tiny --lengths 256,512 --ablation 512   # CPU smoke test

Prints one markdown table (tokens/s, peak GPU memory, where the time of one profiled step goes),
then the largest T that fits for each attention; --out DIR also writes it with a JSON of every cell.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def tokens(text: str) -> list[int]:
    return [int(float(t[:-1]) * 1024) if t.endswith("k") else int(t) for t in text.split(",") if t]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=tokens, default=tokens("16k,32k,64k,128k,256k"), help="T values, e.g. 16k,32k")
    parser.add_argument("--ablation", type=tokens, default=tokens("128k"),
                        help="T values of the rows that add one memory technique at a time (recipe attention)")
    parser.add_argument("--doc-tokens", type=tokens, default=None, help="document length in the pack (default: T)")
    parser.add_argument("--supervised", type=int, default=1024, help="supervised tokens at the end of each document")
    parser.add_argument("--warmup", type=int, default=1, help="unprofiled steps before the profiled one")
    parser.add_argument("--max-step-seconds", type=float, default=150.0,
                        help="skip a cell whose step time, extrapolated from the cells before it, is longer")
    parser.add_argument("--find-max", action="store_true", help="run the recipe at the extrapolated largest T")
    parser.add_argument("--cells", default="",
                        help="run these cells instead of the grid: ATTENTION@T[/TECHNIQUE],... with ATTENTION one of "
                        "full, recipe, swa, e.g. 'swa@256k,recipe@256k,swa@256k/defaults + tiled MLP'")
    parser.add_argument("--tiny", action="store_true", help="the shipped tiny Qwen3 shape instead of Qwen3-4B")
    parser.add_argument("--out", type=Path, default=None, help="also write bench_train.md and .json here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from swaa_train.benchmark import main_bench, parse_cells

    report = main_bench(
        args.lengths, args.ablation, tiny=args.tiny, warmup=args.warmup,
        doc_tokens=args.doc_tokens[0] if args.doc_tokens else None, supervised=args.supervised,
        max_step_s=args.max_step_seconds, out=args.out, find_max=args.find_max, cells=parse_cells(args.cells),
        log=lambda line: print(line, flush=True),
    )
    print(report)


if __name__ == "__main__":
    main()
