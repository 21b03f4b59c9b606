"""One training run from a recipe: model -> data -> SWAATrainer -> adapter + swaa_config.json."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset
from transformers import set_seed
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .data import build_sft_dataset, load_chat_template, load_rows
from .memory import configure_training, limit_offloading, offload_limit_bytes
from .model import load_config, load_model, load_tokenizer, position_limit
from .recipe import DataArgs, Recipe, load_recipe, resolved_recipe
from .swaa_config import RANDOM_BASE_DIR
from .trainer import SWAATrainer, lora_config

RANDOM_INIT_RECORD = "random_init.json"  # in base-model/: the seed and config it was generated from

logger = logging.get_logger(__name__)


def load_training_rows(args: DataArgs) -> Dataset:
    """The raw rows of the recipe's data section (a Hub id, a local path, or the synthetic set)."""
    if args.path == "synthetic":
        from .synthetic import make_longqa_rows

        rows = make_longqa_rows(
            args.synthetic_rows,
            seed=args.synthetic_seed,
            min_words=args.synthetic_words[0],
            max_words=args.synthetic_words[1],
        )
        return Dataset.from_list(rows)
    return load_rows(args.path, split=args.split)


def save_random_base(model, tokenizer, output_dir: str, seed: int | None = None, source: str | None = None) -> str:
    """A random-init base exists nowhere else: keep it beside the adapter so the run can be reloaded."""
    path = f"{output_dir}/{RANDOM_BASE_DIR}"
    if is_deepspeed_zero3_enabled():  # its weights are already sharded: saving would write empty tensors
        logger.warning("ZeRO-3: the random-init base is not saved beside the adapter")
        return path
    if PartialState().is_main_process:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        record = {"seed": seed, "config": source}
        Path(path, RANDOM_INIT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return path


def set_chat_template(tokenizer, data: DataArgs, training) -> None:
    """Put the recipe's chat template on the tokenizer before the rows are tokenized; the
    trainer saves the tokenizer, so the saved template is the one the data was rendered with.

    TRL applies `training.chat_template_path` only after this package has tokenized: a
    template file there is applied here instead (TRL's second application changes nothing);
    cloning another tokenizer's template (a model id or directory) cannot be, so it is refused.
    """
    template = data.chat_template
    trl_path = getattr(training, "chat_template_path", None)
    if trl_path is not None:
        if template is not None:
            raise ValueError("data.chat_template and training.chat_template_path: set data.chat_template only")
        if not (Path(trl_path).is_file() and trl_path.endswith((".jinja", ".j2"))):  # TRL's own test
            raise ValueError(
                f"training.chat_template_path={trl_path!r}: TRL clones that template after the data is "
                "tokenized, so the data would not use it; set data.chat_template to a Jinja file or text instead"
            )
        template = trl_path
    if template is not None:
        tokenizer.chat_template = load_chat_template(template)
        logger.info("Chat template set from %s", "data.chat_template" if data.chat_template else trl_path)


def saved_random_base(recipe: Recipe, output_dir: str) -> str | None:
    """The random-init base an earlier run (or the run being resumed) saved in output_dir, if any.

    It is reused, never regenerated: its checkpoints were trained on it. A different
    training.seed would generate another base, so it is refused."""
    path = Path(output_dir, RANDOM_BASE_DIR)
    if not (path / "config.json").is_file():
        return None
    if not any(path.glob("*.safetensors")):  # killed while saving it, before any training: make it again
        logger.warning("%s has no weights (the run that wrote it was stopped): generating it again", path)
        return None
    record_file = path / RANDOM_INIT_RECORD
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    seed = record.get("seed")
    if seed is not None and seed != recipe.training.seed:
        raise ValueError(
            f"training.seed={recipe.training.seed}, but {path} was generated with seed {seed} and the run's "
            f"checkpoints were trained on it; use training.seed={seed}, or a new training.output_dir"
        )
    logger.info("Random-init base: reusing %s (not regenerated)", path)
    return str(path)


def take_hub_token(training):
    """training.hub_token goes to huggingface_hub through HF_TOKEN in this process, and out of the
    training arguments, which the Trainer pickles into training_args.bin of every checkpoint."""
    if not training.hub_token:
        return training
    os.environ["HF_TOKEN"] = training.hub_token
    logger.info("training.hub_token: handed to huggingface_hub as HF_TOKEN (never written)")
    return dataclasses.replace(training, hub_token=None)


def sample_length_limit(recipe: Recipe, config) -> tuple[int | None, str]:
    """The most tokens a sample may have, and the setting that says so.

    A sample longer than training.max_length is dropped (and counted) rather than cut to
    training.max_length tokens, which would cut off its answer, whatever data.max_length says.
    Samples past the model's positions are dropped too."""
    data_max, training_max = recipe.data.max_length, recipe.training.max_length
    if data_max is not None and training_max is not None and data_max > training_max:
        logger.warning(
            "data.max_length=%d is larger than training.max_length=%d: samples longer than %d tokens are dropped "
            "(cut to training.max_length, they would lose their answers)",
            data_max,
            training_max,
            training_max,
        )
    limits = [
        (recipe.data.max_length, "data.max_length"),
        (recipe.training.max_length, "training.max_length"),
        (position_limit(config), "the model's max_position_embeddings"),
    ]
    limits = [(value, name) for value, name in limits if value is not None]
    return min(limits, key=lambda item: item[0]) if limits else (None, "max_length")


def check_lora_targets(model, recipe: Recipe) -> None:
    """PEFT refuses target modules the model does not have, but only once the trainer is built."""
    names = [name for name, _ in model.named_modules()]
    targets = list(recipe.lora.target_modules)
    if not any(name == t or name.endswith(f".{t}") for name in names for t in targets):
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "weight")})
        raise ValueError(
            f"lora.target_modules={targets}: no module of {recipe.model.name_or_path} has these names; "
            f"its modules with weights are named {linear}"
        )


def build_datasets(recipe: Recipe, tokenizer, config, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """Tokenized training samples and, with data.eval_path or data.eval_fraction, evaluation samples."""
    data = recipe.data
    max_length, max_length_name = sample_length_limit(recipe, config)
    encode = functools.partial(
        build_sft_dataset,
        tokenizer=tokenizer,
        format=data.format,
        min_length=data.min_length,
        max_length=max_length,
        judge_filter=data.judge_filter,
        system_prompt=data.system_prompt,
        num_proc=data.num_proc,
        max_length_name=max_length_name,
    )
    with PartialState().main_process_first():
        try:
            train = encode(load_training_rows(data), max_samples=data.max_samples)
            evaluation = None
            if data.eval_path is not None:
                evaluation = encode(load_rows(data.eval_path, split=data.eval_split))
        except ValueError as err:  # name the file, unless the message does
            named = str(data.path) in str(err) or (data.eval_path and str(data.eval_path) in str(err))
            raise ValueError(str(err) if named else f"data.path={data.path}: {err}") from None
    if evaluation is None and data.eval_fraction is not None:
        if len(train) < 2:
            raise ValueError(f"data.eval_fraction: {len(train)} training sample(s) cannot be split")
        held_out = train.train_test_split(test_size=data.eval_fraction, seed=seed)
        return held_out["train"], held_out["test"]
    return train, evaluation


def check_eval_strategy(training, eval_dataset: Dataset | None) -> None:
    strategy = getattr(training.eval_strategy, "value", training.eval_strategy)
    if strategy != "no" and eval_dataset is None:
        raise ValueError(
            f"training.eval_strategy={strategy!r} needs evaluation data: set data.eval_path or data.eval_fraction"
        )
    if strategy == "no" and eval_dataset is not None:
        logger.warning("Evaluation data is set but training.eval_strategy is 'no': it is never evaluated")


def build_trainer(recipe: Recipe, raw: dict | None = None) -> SWAATrainer:
    # Everything that can be refused is checked before anything is written to output_dir.
    training = take_hub_token(configure_training(recipe.memory, recipe.training))
    tokenizer = load_tokenizer(recipe.model)
    set_chat_template(tokenizer, recipe.data, training)
    config = load_config(recipe.model)
    random_base = saved_random_base(recipe, training.output_dir) if recipe.model.from_config else None
    dataset, eval_dataset = build_datasets(recipe, tokenizer, config, seed=training.seed)
    check_eval_strategy(training, eval_dataset)
    logger.info(
        "Training on %d samples%s", len(dataset), f", evaluating on {len(eval_dataset)}" if eval_dataset else ""
    )
    base_model = recipe.model.name_or_path
    set_seed(recipe.training.seed)
    if random_base is not None:
        model_args = dataclasses.replace(recipe.model, name_or_path=random_base, from_config=False)
        model = load_model(model_args, recipe.swaa)
    else:
        model = load_model(recipe.model, recipe.swaa, config=config)
    logger.info("SWAA attention: %s", recipe.swaa.describe())
    check_lora_targets(model, recipe)
    if random_base is not None:
        base_model = random_base
    elif recipe.model.from_config:
        base_model = save_random_base(
            model, tokenizer, training.output_dir, seed=recipe.training.seed, source=recipe.model.name_or_path
        )
    trainer = SWAATrainer(
        model=model,
        args=training,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(recipe.lora),
        swaa_config=recipe.swaa,
        base_model=base_model,
        recipe_name=recipe.name,
        recipe_raw=resolved_recipe(recipe, raw) if raw is not None else None,
        write_model_card=recipe.export.model_card,
    )
    limit_offloading(trainer, offload_limit_bytes(recipe.memory))  # a no-op without activation offloading
    return trainer


def is_complete_checkpoint(path: Path) -> bool:
    """The Trainer writes trainer_state.json last: a checkpoint without it (or with half of it) was interrupted."""
    try:
        json.loads((path / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError):
        return False
    return True


def resolve_resume(resume: str | bool | None, output_dir: str) -> tuple[str | None, list[Path]]:
    """The checkpoint to resume from, and the incomplete checkpoints (of a run killed while writing
    them) that `true` passes over: `true` means the newest complete checkpoint-N of output_dir."""
    if not resume:
        return None, []
    if isinstance(resume, str):
        if not Path(resume).is_dir():
            raise ValueError(f"training.resume_from_checkpoint: no checkpoint folder {resume}")
        if not is_complete_checkpoint(Path(resume)):
            raise ValueError(
                f"training.resume_from_checkpoint: {resume} is incomplete (no readable {TRAINER_STATE_NAME}; "
                "the run was stopped while writing it)"
            )
        return resume, []
    prefix = f"{PREFIX_CHECKPOINT_DIR}-"
    found = [p for p in Path(output_dir).glob(f"{prefix}*") if p.is_dir() and p.name.removeprefix(prefix).isdigit()]
    incomplete = []
    for path in sorted(found, key=lambda p: int(p.name.removeprefix(prefix)), reverse=True):
        if is_complete_checkpoint(path):
            return str(path), incomplete
        incomplete.append(path)
    raise ValueError(f"training.resume_from_checkpoint=true: no complete checkpoint in {output_dir}")


def staging_leftovers(output_dir: str) -> list[Path]:
    """Temporary checkpoint folders (`.tmp-checkpoint-N`) that a run killed while saving left behind."""
    from .trainer import STAGING_PREFIX

    return [p for p in Path(output_dir).glob(f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()]


def remove_incomplete(checkpoints: list[Path]) -> None:
    """Left in place, an incomplete checkpoint counts against save_total_limit and pushes out a good one."""
    for path in checkpoints:
        logger.warning("Skipping and removing %s: incomplete (the run was stopped while writing it)", path)
        if PartialState().is_main_process:
            shutil.rmtree(path, ignore_errors=True)


def run_training(recipe_name: str, overrides: list[str] | None = None) -> SWAATrainer:
    """Load recipes/NAME.yaml (or a path) with `section.field=value` overrides and train."""
    return run_recipe(*load_recipe(recipe_name, overrides))


def run_recipe(recipe: Recipe, raw: dict | None = None) -> SWAATrainer:
    """Train, save adapter + swaa_config.json + card, and merge if the recipe asks to."""
    resume, incomplete = resolve_resume(recipe.training.resume_from_checkpoint, recipe.training.output_dir)
    trainer = build_trainer(recipe, raw)
    remove_incomplete(incomplete + staging_leftovers(recipe.training.output_dir))
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(recipe.training.output_dir)
    logger.info("Adapter, swaa_config.json and model card written to %s", recipe.training.output_dir)
    if recipe.export.merge:
        from .export import merge_adapter

        merge_adapter(recipe.training.output_dir, f"{recipe.training.output_dir}/merged", overwrite=True)
    return trainer
