"""Command line: `swaa-train [train] --recipe NAME [section.field=value ...]`, and after training
`swaa-train merge | push | eval | distill ...` (each with --help).

`python train.py ...` and `accelerate launch train.py ...` run the same `train` command.
"""

from __future__ import annotations

import argparse
import logging as stdlib_logging
import sys

from transformers.utils import logging

logger = logging.get_logger("swaa_train")

# What a bad input raises (a recipe field, a data row, a missing file, no network for a push):
# reported on one line.
INPUT_ERRORS = (ValueError, FileNotFoundError, ConnectionError)


def fail(prog: str, err: BaseException) -> None:
    """Report a bad input as one line on stderr and exit 2, as argparse does (traceback at debug level)."""
    logger.debug("%s failed", prog, exc_info=err)
    message = " ".join(str(err).split("\n")).strip() or type(err).__name__
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def train_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="swaa-train train", description="LoRA fine-tuning under the SWAA mask, from a recipe."
    )
    parser.add_argument("--recipe", required=True, help="recipes/NAME.yaml by NAME, or a path to a YAML recipe")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.field=value",
        help="override any recipe field, e.g. training.max_steps=20 swaa.keep_first=64",
    )
    args = parser.parse_args(argv)
    from .recipe import load_recipe

    try:  # a bad recipe is a usage error: one line naming the field, no traceback
        recipe, raw = load_recipe(args.recipe, args.overrides)
    except ValueError as err:
        fail(parser.prog, err)
    from .run import run_recipe  # heavy imports only once the recipe is good

    try:  # bad data, a model that cannot train: also one line naming the field, file or row
        run_recipe(recipe, raw)
    except INPUT_ERRORS as err:
        fail(parser.prog, err)


# ------------------------------------------------------------------------------------------
# After training: merge, push, eval, distill
# ------------------------------------------------------------------------------------------
def merge_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="swaa-train merge", description="Merge a LoRA adapter into its base; keep swaa_config and tokenizer."
    )
    parser.add_argument("adapter_dir", help="adapter directory written by training (adapter + swaa_config.json)")
    parser.add_argument("out_dir", help="merged model directory to write (written atomically)")
    parser.add_argument("--base", default=None, help="base model id or path (default: the adapter's record)")
    parser.add_argument("--dtype", default="auto", help="weights dtype: auto, bfloat16, float16 or float32")
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    args = parser.parse_args(argv)
    from .export import merge_adapter

    try:
        merge_adapter(args.adapter_dir, args.out_dir, base_model=args.base, dtype=args.dtype, overwrite=args.overwrite)
    except INPUT_ERRORS as err:
        fail(parser.prog, err)


def push_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="swaa-train push", description="Upload an adapter or merged directory (with its card) to the Hub."
    )
    parser.add_argument("folder", help="adapter or merged model directory")
    parser.add_argument("--repo-id", required=True, help="Hub repo, 'owner/name' or 'name'")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", default=None, help="branch to upload to")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the files and card; upload nothing")
    args = parser.parse_args(argv)
    from .hub import push_to_hub

    try:
        plan = push_to_hub(
            args.folder,
            args.repo_id,
            private=args.private,
            dry_run=args.dry_run,
            commit_message=args.commit_message,
            revision=args.revision,
        )
    except INPUT_ERRORS as err:
        fail(parser.prog, err)
    if args.dry_run:
        print(plan.describe())


def add_generation_args(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """The options eval and distill share: how many rows, and how the model generates."""
    parser.add_argument("--limit", type=positive_int, default=None, help="use the first N rows only (N >= 1)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--device", default=None, help="e.g. cuda; default: where the model loads")


def eval_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="swaa-train eval", description="Long-context QA accuracy under several SWAA settings, in one run."
    )
    parser.add_argument("--model", required=True, help="base, merged or adapter directory / Hub id")
    parser.add_argument("--adapter", default=None, help="LoRA adapter (settings run with and without it)")
    parser.add_argument("--data", required=True, help="parquet/json(l) with prompt (or context+question) and answer")
    parser.add_argument("--out", required=True, help="output directory: samples.jsonl, results.json, results.md")
    parser.add_argument("--settings", default=None, help="YAML/JSON list of {name, swaa, adapter}; default: the ladder")
    add_generation_args(parser, max_new_tokens=32)
    args = parser.parse_args(argv)
    from .evaluate import format_table, load_settings, run_evaluation

    settings = load_settings(args.settings) if args.settings else None
    summary = run_evaluation(
        args.model,
        args.data,
        args.out,
        adapter=args.adapter,
        settings=settings,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
    )
    print(format_table(summary))


def distill_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="swaa-train distill", description="Self-distillation: the full-attention model answers, a judge scores."
    )
    parser.add_argument("--model", required=True, help="the original (full-attention) model")
    parser.add_argument("--data", required=True, help="fusang_long-style rows: prompt, question, answer")
    parser.add_argument("--out", required=True, help="parquet to write (prompt/response/judge + the input columns)")
    parser.add_argument("--judge-model", default=None, help="judge model asked yes/no (default: answer match)")
    add_generation_args(parser, max_new_tokens=256)
    args = parser.parse_args(argv)
    from .distill import run_self_distill

    stats = run_self_distill(
        args.model,
        args.data,
        args.out,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        judge_model=args.judge_model,
        dtype=args.dtype,
        device=args.device,
    )
    print(f"{stats['judged_correct']}/{stats['rows']} responses judged correct -> {stats['out_path']}")


COMMANDS = {"train": train_main, "merge": merge_main, "push": push_main, "eval": eval_main, "distill": distill_main}


def setup_logging() -> None:
    """This package's INFO logs and transformers' warnings, on stderr (the Trainer prints its own progress)."""
    logging.set_verbosity_warning()
    package = stdlib_logging.getLogger("swaa_train")
    if not package.handlers:
        handler = stdlib_logging.StreamHandler()
        handler.setFormatter(stdlib_logging.Formatter("[swaa_train|%(levelname)s] %(message)s"))
        package.addHandler(handler)
    package.setLevel(stdlib_logging.INFO)
    package.propagate = False


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv.pop(0)](argv)
    elif argv and not argv[0].startswith("-"):
        sys.exit(f"swaa-train: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    else:
        train_main(argv)


if __name__ == "__main__":
    main()
