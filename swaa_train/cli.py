"""Command line: `swaa-train [train] --recipe NAME [section.field=value ...]`.

`python train.py ...` and `accelerate launch train.py ...` run the same `train` command.
"""

from __future__ import annotations

import argparse
import sys

from transformers.utils import logging

logger = logging.get_logger("swaa_train")


def train_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="swaa-train train", description="LoRA fine-tuning under the SWAA mask, from a recipe."
    )
    parser.add_argument("--recipe", required=True, help="recipes/NAME.yaml by NAME, or a path to a YAML recipe")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.field=value",
        help="override any recipe field, e.g. training.max_steps=20 swaa.keep_first=64",
    )
    args = parser.parse_args(argv)
    from .run import run_training  # heavy imports only once the arguments are good

    run_training(args.recipe, args.overrides)


COMMANDS = {"train": train_main}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.set_verbosity_info()
    logging.enable_explicit_format()
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv.pop(0)](argv)
    elif argv and not argv[0].startswith("-"):
        sys.exit(f"swaa-train: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    else:
        train_main(argv)


if __name__ == "__main__":
    main()
