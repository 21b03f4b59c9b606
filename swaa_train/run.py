"""One training run from a recipe: model -> data -> SWAATrainer -> adapter + swaa_config.json."""

from __future__ import annotations

from accelerate import PartialState
from datasets import Dataset
from transformers import set_seed
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from .data import build_sft_dataset, load_rows
from .memory import configure_training
from .model import load_model, load_tokenizer
from .recipe import DataArgs, Recipe, load_recipe
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


def build_trainer(recipe: Recipe, raw: dict | None = None) -> SWAATrainer:
    set_seed(recipe.training.seed)
    training = configure_training(recipe.memory, recipe.training)
    tokenizer = load_tokenizer(recipe.model)
    model = load_model(recipe.model, recipe.swaa)
    logger.info("SWAA attention: %s", recipe.swaa.describe())
    base_model = recipe.model.name_or_path
    if recipe.model.from_config:
        base_model = save_random_base(model, tokenizer, training.output_dir)
    data = recipe.data
    with PartialState().main_process_first():
        dataset = build_sft_dataset(
            load_training_rows(data),
            tokenizer,
            format=data.format,
            min_length=data.min_length,
            max_length=data.max_length,
            judge_filter=data.judge_filter,
            system_prompt=data.system_prompt,
            max_samples=data.max_samples,
            num_proc=data.num_proc,
        )
    logger.info("Training on %d samples", len(dataset))
    trainer = SWAATrainer(
        model=model,
        args=training,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(recipe.lora),
        swaa_config=recipe.swaa,
        base_model=base_model,
        recipe_name=recipe.name,
        recipe_raw=raw,
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
