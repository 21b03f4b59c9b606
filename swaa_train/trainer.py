"""SWAATrainer: TRL's SFTTrainer training LoRA under the SWAA mask.

What it adds to SFTTrainer:
- every batch carries `swaa_full_from`, the index of each document's first supervised
  token, so answer tokens attend to all keys (FA decode) while the prompt uses the window;
- swaa_config.json, the SWAA model card (README.md) and the recipe as run (recipe.yaml) are
  written with every checkpoint and the final adapter, and are in every Hub push
  (`training.push_to_hub`): the final one, each checkpoint's and `hub_strategy`'s checkpoint folders;
- at the end of training, the loss curve as `loss.png` beside the adapter (with matplotlib).

What SFTTrainer already does and this relies on: padding-free packing (`packing=True`,
`packing_strategy="bfd"`: cu_seq_lens per document), PEFT wrapping from `peft_config`,
gradient checkpointing, and a fused LM head that projects only the hidden states at
supervised positions (the full-vocabulary logits of a long prompt are never built).

Distributed training is accelerate's, DeepSpeed's and transformers' (recipes/accelerate/).
Under DeepSpeed Ulysses sequence parallelism each rank gets a slice of every packed row,
while the attention sees the whole row for a subset of heads; the per-document fields
(`PER_DOCUMENT_KEYS`) must then reach every rank whole, see `FullFromCollator`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import torch
import yaml
from peft import LoraConfig
from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging
from trl import SFTTrainer

from .attention import ATTN_IMPLEMENTATION, FULL_FROM_KEY, apply_swaa, full_from_of_labels
from .recipe import LoraArgs, mask_secrets
from .swaa_config import SWAAConfig, normalize_model_swaa_config

logger = logging.get_logger(__name__)

# A checkpoint is written as OUTPUT_DIR/.tmp-checkpoint-N/checkpoint-N, then renamed.
STAGING_PREFIX = ".tmp-"

# Batch entries with one value per document (or document boundary), not one per token.
PER_DOCUMENT_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", FULL_FROM_KEY)


def lora_config(args: LoraArgs) -> LoraConfig:
    return LoraConfig(
        r=args.r,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=list(args.target_modules),
        use_rslora=args.use_rslora,
        bias=args.bias,
        task_type="CAUSAL_LM",
    )


class FullFromCollator:
    """Wraps a collator; adds `swaa_full_from` (one entry per document) to each batch.

    With `per_document_as_lists` (sequence parallelism) the per-document entries leave as
    Python lists: DeepSpeed's UlyssesSPDataLoaderAdapter slices every tensor of a batch along
    the sequence and hands every other value to all ranks unchanged, and these entries
    describe the whole row. `SWAATrainer._prepare_inputs` turns them back into tensors.
    """

    def __init__(self, collator, per_document_as_lists: bool = False):
        self.collator = collator
        self.per_document_as_lists = per_document_as_lists

    def __call__(self, examples):
        batch = self.collator(examples)
        labels = batch["labels"]
        if "cu_seq_lens_q" in batch:  # padding-free: one packed row
            batch[FULL_FROM_KEY] = full_from_of_labels(labels[0], batch["cu_seq_lens_q"])
        else:  # one right-padded document per row
            width = labels.shape[1]
            cu = torch.arange(labels.shape[0] + 1, dtype=torch.int32) * width
            batch[FULL_FROM_KEY] = full_from_of_labels(labels.reshape(-1), cu)
        if self.per_document_as_lists:
            for key in PER_DOCUMENT_KEYS:
                if key in batch:
                    batch[key] = batch[key].tolist()
        return batch


def per_document_tensors(inputs: dict, device) -> dict:
    """Turn the per-document lists of `FullFromCollator(per_document_as_lists=True)` back into tensors."""
    for key in PER_DOCUMENT_KEYS:
        if isinstance(inputs.get(key), list):
            inputs[key] = torch.tensor(inputs[key], dtype=torch.int32, device=device)
    return inputs


def model_card(swaa: SWAAConfig, base_model: str, recipe_name: str, recipe_raw: dict | None) -> str:
    # Tokens, keys and passwords a recipe carries are used by the run, never written.
    recipe_yaml = yaml.safe_dump(mask_secrets(recipe_raw), sort_keys=False) if recipe_raw else "(not recorded)\n"
    return f"""---
base_model: {base_model}
library_name: peft
tags: [swaa, sliding-window-attention, lora, swaa-train]
---
# SWAA LoRA adapter for {base_model}

A LoRA adapter trained with swaa-train (Sliding Window Attention Adaptation,
arXiv 2512.10411) so that `{base_model}` runs with sliding-window attention.

**SWAA settings** (`swaa_config.json`): {swaa.describe()}.
Run the model with these settings: the adapter was trained under this exact mask.

## How to load
```python
from swaa_train.inference import load_swaa_model
model, tokenizer = load_swaa_model("{base_model}", adapter="<this repo or directory>")
```
or with plain PEFT, on a base switched to SWAA attention with the saved config:
```python
from peft import PeftModel
from transformers import AutoModelForCausalLM
from swaa_train.attention import apply_swaa
from swaa_train.swaa_config import SWAAConfig
base = apply_swaa(AutoModelForCausalLM.from_pretrained("{base_model}"), SWAAConfig.load("<this directory>"))
model = PeftModel.from_pretrained(base, "<this repo or directory>")
```

## Recipe `{recipe_name}`
```yaml
{recipe_yaml}```
"""


LOSS_PLOT_NAME = "loss.png"
RECIPE_FILE_NAME = "recipe.yaml"


def loss_curve(log_history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """(steps, values) of the training loss and, where evaluated, the eval loss, from `state.log_history`."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for key in ("loss", "eval_loss"):
        points = [(log["step"], float(log[key])) for log in log_history if key in log and "step" in log]
        if points:
            curves[key] = ([step for step, _ in points], [value for _, value in points])
    return curves


def write_loss_plot(log_history: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Plot the loss curves to `path` (PNG); None, writing nothing, without matplotlib or losses."""
    curves = loss_curve(log_history)
    try:
        from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it is
    except ImportError:
        return None
    if not curves:
        return None
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    for key, (steps, values) in curves.items():
        axes.plot(steps, values, marker="o" if key == "eval_loss" else None, markersize=3, label=key)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)


class LossPlotCallback(TrainerCallback):
    """Writes loss.png in the output directory when training ends (main process only)."""

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            path = write_loss_plot(state.log_history, Path(args.output_dir) / LOSS_PLOT_NAME, title=args.run_name or "")
            if path is not None:
                logger.info("Loss curve written to %s", path)


class SWAATrainer(SFTTrainer):
    """SFTTrainer under the SWAA mask; saves swaa_config.json and a card beside every adapter.

    `swaa_config` may be left out when the model already carries its settings as
    `model.config.swaa_config` (a mapping, or the reference code's config object).
    """

    def __init__(
        self,
        *args,
        swaa_config: SWAAConfig | None = None,
        base_model: str = "unknown",
        recipe_name: str = "custom",
        recipe_raw: dict | None = None,
        write_model_card: bool = True,
        **kwargs,
    ):
        swaa_config = self._swaa_settings(kwargs.get("model", args[0] if args else None), swaa_config)
        training_args = kwargs.get("args")
        # Our datasets are pre-tokenized with a completion_mask: train on the answer only
        # (on a copy: the caller's config stays as it was).
        if training_args is not None and training_args.completion_only_loss is None:
            kwargs["args"] = dataclasses.replace(training_args, completion_only_loss=True)
        super().__init__(*args, **kwargs)
        self.swaa_config = swaa_config
        self.base_model = base_model
        self.recipe_name = recipe_name
        self.recipe_raw = recipe_raw
        self.write_model_card = write_model_card
        sequence_parallel = self._enable_sequence_parallel_attention()
        self.data_collator = FullFromCollator(self.data_collator, per_document_as_lists=sequence_parallel)
        self.add_callback(LossPlotCallback())

    @staticmethod
    def _swaa_settings(model, swaa_config) -> SWAAConfig:
        """The settings to train under; the model is switched to them (JSON-safe on its config)."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base = base if isinstance(base, PreTrainedModel) else None  # a Hub id: SFTTrainer loads it
        on_model = normalize_model_swaa_config(base) if base is not None else None
        swaa = SWAAConfig.from_dict(swaa_config) if swaa_config is not None else on_model
        if swaa is None:
            raise ValueError("swaa_config: pass the SWAA settings, or set model.config.swaa_config")
        if base is not None:  # also where the reference's way left another attention implementation
            apply_swaa(base, swaa)
        return swaa

    def _enable_sequence_parallel_attention(self) -> bool:
        """Under DeepSpeed Ulysses SP, have DeepSpeed wrap the model's own (SWAA) attention.

        accelerate only accepts built-in names for `sp_attn_implementation`, while DeepSpeed's
        UlyssesSPAttentionHF wraps any registered attention and requires the model's own.
        """
        pc = self.accelerator.parallelism_config
        if pc is None or not pc.sp_enabled or pc.sp_backend != "deepspeed":
            return False
        pc.sp_handler.sp_attn_implementation = ATTN_IMPLEMENTATION
        return True

    def _get_num_items_in_batch(self, batch_samples: list, device):
        """The supervised tokens of an optimizer step (all ranks); a step without any trains nothing."""
        num_items = super()._get_num_items_in_batch(batch_samples, device)
        if num_items is not None and float(num_items) == 0:
            raise ValueError(
                f"step {self.state.global_step + 1}: the batch holds no supervised (answer) token, so the loss and "
                "every gradient are 0; check that the samples' answers fit in training.max_length"
            )
        return num_items

    def _prepare_inputs(self, inputs):
        return per_document_tensors(super()._prepare_inputs(inputs), self.args.device)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the adapter (final or checkpoint) with its swaa_config.json and SWAA model card."""
        card = Path(output_dir or self.args.output_dir) / "README.md"
        had_card = card.exists()
        super().save_model(output_dir, _internal_call=_internal_call)
        if not self.write_model_card and not had_card and self.args.should_save:
            card.unlink(missing_ok=True)  # PEFT's save_pretrained writes a card of its own
        self.write_swaa_files(output_dir or self.args.output_dir)

    def create_model_card(self, *args, **kwargs):
        """The SWAA card in place of TRL's generic one (TRL writes its card at every checkpoint,
        transformers before every final push)."""
        self.write_swaa_files(self.args.output_dir)

    def _save_checkpoint(self, model, trial) -> None:
        """Write checkpoint-N under a temporary folder and rename it once complete, so a run killed
        while saving leaves no checkpoint-N that looks whole (resume never trips on one)."""
        if trial is not None:  # hyperparameter search: its own run folders
            return super()._save_checkpoint(model, trial)
        run_dir = self.args.output_dir
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
        self._staging_dir = staging  # where _get_output_dir points while the Trainer writes
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every rank's files (RNG states, shards) are in
        final = os.path.join(run_dir, name)
        if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(staging):
            self.state.best_model_checkpoint = final
        if self.args.should_save:
            if os.path.exists(final):  # the same step saved by an earlier, stopped run
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging, ignore_errors=True)
            self._rotate(run_dir)
        self.accelerator.wait_for_everyone()

    def _rotate(self, run_dir: str) -> None:
        """transformers' own rotation (save_total_limit), on the run folder the checkpoint landed in."""
        try:  # transformers >= 5.2x: a function of trainer_utils
            from transformers.trainer_utils import rotate_checkpoints
        except ImportError:
            return self._rotate_checkpoints(use_mtime=True, output_dir=run_dir)
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_staging_dir", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """A checkpoint push uploads the output directory, where transformers copies only the
        weights from the checkpoint: the SWAA files go there first (the checkpoint folder,
        uploaded too under hub_strategy checkpoint/all_checkpoints, has them from save_model)."""
        self.write_swaa_files(self.args.output_dir)
        super()._push_from_checkpoint(checkpoint_folder)

    def write_swaa_files(self, output_dir: str) -> None:
        """swaa_config.json, the SWAA card (README.md) and, when known, recipe.yaml in `output_dir`."""
        if not self.args.should_save:
            return
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        self.swaa_config.save(output_dir)
        if self.write_model_card:  # export.model_card=false writes none
            card = model_card(self.swaa_config, self.base_model, self.recipe_name, self.recipe_raw)
            (output_dir / "README.md").write_text(card)
        if self.recipe_raw:
            recipe_yaml = yaml.safe_dump(mask_secrets(self.recipe_raw), sort_keys=False)
            (output_dir / RECIPE_FILE_NAME).write_text(recipe_yaml)
