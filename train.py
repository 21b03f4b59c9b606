"""Train a SWAA LoRA adapter from a recipe.

python train.py --recipe demo
accelerate launch train.py --recipe qwen3_swa2k training.output_dir=outputs/qwen3-swa2k
"""

import sys

from swaa_train.cli import setup_logging, train_main

if __name__ == "__main__":
    setup_logging()
    train_main(sys.argv[1:])
