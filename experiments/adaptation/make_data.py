"""Stage 1 (CPU): the experiment's data as parquet files in --out.

    python -m experiments.adaptation.make_data --out outputs/repro/data

train / eval: single- and two-hop retrieval questions over 2k-16k-token prompts (disjoint
entities), fusang_long schema; train_short / lm_short / eval_short: 64-256 tokens; lm / lm_short: text
for next-token pretraining; drill: look-up drills (facts, then their recall; no filler);
eval_short: held-out short questions that pretraining checks itself on; eval_bins (with
--eval-bins-rows): the multi-seed study's held-out set, every question in one length bin (2k-4k,
4k-8k, 8k-16k, and 16k-24k beyond the trained range) and one depth bin (first 5%, middle,
last 20%). Fixed seeds: the same files on every machine.
"""

import argparse
import json

from transformers.utils import logging

from experiments.adaptation.data import show_progress, write_repro_data

logger = logging.get_logger("swaa_train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/repro/data", help="directory for the parquet files")
    parser.add_argument("--train-rows", type=int, default=6000, help="train.parquet rows (2k-16k tokens)")
    parser.add_argument("--short-rows", type=int, default=30000, help="train_short.parquet rows")
    parser.add_argument("--lm-rows", type=int, default=3000, help="lm.parquet documents (2k-16k tokens)")
    parser.add_argument("--lm-short-rows", type=int, default=10000, help="lm_short.parquet documents")
    parser.add_argument(
        "--drill-rows", type=int, default=60000, help="drill.parquet: facts then their recall, no filler"
    )
    parser.add_argument(
        "--eval-short-rows", type=int, default=200, help="eval_short.parquet: held-out check in pretraining"
    )
    parser.add_argument("--eval-rows", type=int, default=200, help="eval.parquet rows (held-out entities)")
    parser.add_argument(
        "--eval-bins-rows",
        type=int,
        default=0,
        help="eval_bins.parquet: the multi-seed study's held-out set over length x depth bins (0: none; 300 there)",
    )
    parser.add_argument("--min-tokens", type=int, default=2048, help="shortest train/eval/lm prompt")
    parser.add_argument("--max-tokens", type=int, default=16384, help="longest train/eval/lm prompt")
    parser.add_argument("--short-tokens", type=int, nargs=2, default=[64, 256], help="length range of *_short")
    parser.add_argument("--workers", type=int, default=None, help="generator processes (default: all cores)")
    args = parser.parse_args()
    show_progress()
    counts = {
        "train": args.train_rows,
        "train_short": args.short_rows,
        "lm": args.lm_rows,
        "lm_short": args.lm_short_rows,
        "eval": args.eval_rows,
        "drill": args.drill_rows,
        "eval_short": args.eval_short_rows,
    }
    if args.eval_bins_rows:
        counts["eval_bins"] = args.eval_bins_rows
    paths = write_repro_data(
        args.out,
        counts,
        min_tokens=args.min_tokens,
        max_tokens=args.max_tokens,
        short_tokens=tuple(args.short_tokens),
        workers=args.workers,
    )
    logger.info("Wrote %s", json.dumps({k: str(v) for k, v in paths.items()}))


if __name__ == "__main__":
    main()
