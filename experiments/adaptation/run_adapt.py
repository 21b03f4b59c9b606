"""Stage 3 (GPU): evaluate the pretrained model under the SWAA ladder, LoRA-train it with the
toolkit's trainer under the recipe's SWAA settings, evaluate the ladder again with the adapter.

    python -m experiments.adaptation.run_adapt --recipe experiments/adaptation/lora.yaml --eval-data outputs/repro/data/eval.parquet \
        --out outputs/repro/results --lora-time-budget 90 [section.field=value ...]

Writes --out/eval_base and --out/eval_adapter (samples.jsonl, results.json, results.md each)
and the adapter in the recipe's training.output_dir.
"""

import argparse
import json

from transformers.utils import logging

from experiments.adaptation.data import show_progress
from experiments.adaptation.ladder import run_adaptation

logger = logging.get_logger("swaa_train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipe", default="experiments/adaptation/lora.yaml", help="LoRA recipe (its swaa section sets the ladder)"
    )
    parser.add_argument("--eval-data", default="outputs/repro/data/eval.parquet", help="held-out questions")
    parser.add_argument("--out", default="outputs/repro/results", help="directory for the evaluation results")
    parser.add_argument(
        "--lora-time-budget", type=float, default=None, help="stop LoRA training after this many seconds"
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N questions only")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="answer length limit")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
    parser.add_argument("--num-proc", type=int, default=None, help="processes tokenizing the LoRA data")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: where the model loads)")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="recipe overrides")
    args = parser.parse_args()
    show_progress()
    timings = run_adaptation(
        args.recipe,
        args.eval_data,
        args.out,
        args.overrides,
        lora_time_budget_s=args.lora_time_budget,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        num_proc=args.num_proc,
        device=args.device,
    )
    logger.info("Adaptation stage done: %s", json.dumps(timings))


if __name__ == "__main__":
    main()
