"""Self-distillation data: the full-attention model answers, each answer is judged.

    python scripts/self_distill.py --model Qwen/Qwen3-4B-Instruct-2507 --data fusang_long.parquet --out distilled.parquet

Same as `swaa-train distill ...`; see swaa_train/cli.py.
"""

import sys

from swaa_train.cli import main

if __name__ == "__main__":
    main(["distill", *sys.argv[1:]])
