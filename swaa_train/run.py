"""One training run from a recipe: model -> data -> SWAATrainer -> adapter + swaa_config.json."""

from __future__ import annotations

import functools
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset
from transformers import set_seed
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from .data import build_sft_dataset, load_chat_template, load_rows
from .memory import configure_training
from .model import load_model, load_tokenizer
from .recipe import DataArgs, Recipe, load_recipe, resolved_recipe
from .trainer import SWAATrainer, lora_config

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


def save_random_base(model, tokenizer, output_dir: str) -> str:
    """A random-init base exists nowhere else: keep it beside the adapter so the run can be reloaded."""
    path = f"{output_dir}/base-model"
    if is_deepspeed_zero3_enabled():  # its weights are already sharded: saving would write empty tensors
        logger.warning("ZeRO-3: the random-init base is not saved beside the adapter")
        return path
    if PartialState().is_main_process:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
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


def build_datasets(data: DataArgs, tokenizer, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """Tokenized training samples and, with data.eval_path or data.eval_fraction, evaluation samples."""
    encode = functools.partial(
        build_sft_dataset,
        tokenizer=tokenizer,
        format=data.format,
        min_length=data.min_length,
        max_length=data.max_length,
        judge_filter=data.judge_filter,
        system_prompt=data.system_prompt,
        num_proc=data.num_proc,
    )
    train = encode(load_training_rows(data), max_samples=data.max_samples)
    if data.eval_path is not None:
        return train, encode(load_rows(data.eval_path, split=data.eval_split))
    if data.eval_fraction is not None:
        if len(train) < 2:
            raise ValueError(f"data.eval_fraction: {len(train)} training sample(s) cannot be split")
        held_out = train.train_test_split(test_size=data.eval_fraction, seed=seed)
        return held_out["train"], held_out["test"]
    return train, None


def check_eval_strategy(training, eval_dataset: Dataset | None) -> None:
    strategy = getattr(training.eval_strategy, "value", training.eval_strategy)
    if strategy != "no" and eval_dataset is None:
        raise ValueError(
            f"training.eval_strategy={strategy!r} needs evaluation data: set data.eval_path or data.eval_fraction"
        )
    if strategy == "no" and eval_dataset is not None:
        logger.warning("Evaluation data is set but training.eval_strategy is 'no': it is never evaluated")


def build_trainer(recipe: Recipe, raw: dict | None = None) -> SWAATrainer:
    set_seed(recipe.training.seed)
    training = configure_training(recipe.memory, recipe.training)
    tokenizer = load_tokenizer(recipe.model)
    set_chat_template(tokenizer, recipe.data, training)
    model = load_model(recipe.model, recipe.swaa)
    logger.info("SWAA attention: %s", recipe.swaa.describe())
    base_model = recipe.model.name_or_path
    if recipe.model.from_config:
        base_model = save_random_base(model, tokenizer, training.output_dir)
    with PartialState().main_process_first():
        dataset, eval_dataset = build_datasets(recipe.data, tokenizer, seed=training.seed)
    check_eval_strategy(training, eval_dataset)
    logger.info(
        "Training on %d samples%s", len(dataset), f", evaluating on {len(eval_dataset)}" if eval_dataset else ""
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
    )
    return trainer


def run_training(recipe_name: str, overrides: list[str] | None = None) -> SWAATrainer:
    """Load recipes/NAME.yaml (or a path) with `section.field=value` overrides and train."""
    return run_recipe(*load_recipe(recipe_name, overrides))


def run_recipe(recipe: Recipe, raw: dict | None = None) -> SWAATrainer:
    """Train, save adapter + swaa_config.json + card, and merge if the recipe asks to."""
    trainer = build_trainer(recipe, raw)
    trainer.train(resume_from_checkpoint=recipe.training.resume_from_checkpoint)
    trainer.save_model(recipe.training.output_dir)
    logger.info("Adapter, swaa_config.json and model card written to %s", recipe.training.output_dir)
    if recipe.export.merge:
        from .export import merge_adapter

        merge_adapter(recipe.training.output_dir, f"{recipe.training.output_dir}/merged", overwrite=True)
    return trainer
