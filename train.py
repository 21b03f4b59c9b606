"""Train a SWAA LoRA adapter from a recipe.

    python train.py --recipe demo
    accelerate launch train.py --recipe qwen3_swa2k training.output_dir=outputs/qwen3-swa2k
"""

from swaa_train.cli import train_main

if __name__ == "__main__":
    import sys

    from transformers.utils import logging

    logging.set_verbosity_info()
    train_main(sys.argv[1:])
