"""SWAATrainer: packing, full_from, the supervised-positions loss, saving and resuming."""

from __future__ import annotations

import json
import struct
import sys

import pytest
import torch
import yaml
from conftest import VOCAB, tiny_model
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from swaa_train.attention import IGNORE_INDEX, apply_swaa, full_from_of_labels
from swaa_train.recipe import LoraArgs
from swaa_train.swaa_config import SWAAConfig
from swaa_train.trainer import FullFromCollator, loss_curve, write_loss_plot

SWAA = SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=True, non_sliding_layers=[1])


def test_first_supervised_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 9, 4, 7]
    labels = torch.randint(0, 5, (sum(lengths),), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.6] = IGNORE_INDEX
    labels[5] = IGNORE_INDEX  # the length-1 document has no supervised token
    cu = torch.tensor([0, 5, 6, 15, 19, 26], dtype=torch.int32)
    expected = []
    for b, n in enumerate(lengths):
        doc = labels[cu[b] : cu[b + 1]].tolist()
        expected.append(next((i for i, t in enumerate(doc) if t != IGNORE_INDEX), n))
    assert full_from_of_labels(labels, cu).tolist() == expected


def _examples(lengths, answer_lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, a in zip(lengths, answer_lengths):
        ids = torch.randint(1, VOCAB, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n - a) + ids[n - a :]})
    return out


def _per_document_losses(model, batch):
    """Summed next-token NLL of each document of a collated batch, from the full logits."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
    logp = torch.log_softmax(logits[0, :-1].float(), -1)
    target = batch["labels"][0, 1:]
    nll = torch.where(target != IGNORE_INDEX, -logp.gather(-1, target.clamp(min=0)[:, None])[:, 0], 0.0)
    cu = batch["cu_seq_lens_q"].tolist()
    # The token predicting document b's position t sits at t - 1: sum nll over [start, end - 1).
    return [nll[cu[b] : cu[b + 1] - 1].sum() for b in range(len(cu) - 1)]


def test_collator_adds_full_from_per_document():
    collator = FullFromCollator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))
    batch = collator(_examples([12, 7, 20], [3, 7, 5]))
    # First supervised token per document; TRL masks each document's first label, so a
    # fully supervised document starts at 1.
    assert batch["swaa_full_from"].tolist() == [9, 1, 15]
    assert batch["cu_seq_lens_q"].tolist() == [0, 12, 19, 39]


def test_packed_batch_gives_each_document_its_own_loss():
    model = apply_swaa(tiny_model("qwen3"), SWAA)
    collator = FullFromCollator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))
    examples = _examples([30, 11, 25], [6, 4, 10], seed=1)
    packed = _per_document_losses(model, collator(examples))
    for b, example in enumerate(examples):
        alone = _per_document_losses(model, collator([example]))[0]
        torch.testing.assert_close(packed[b], alone, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# End to end on the demo recipe (tiny shipped model, synthetic data), a few steps on CPU
# ------------------------------------------------------------------------------------------
def _demo_overrides(tmp_path, steps=6, **extra):
    values = {
        "training.output_dir": str(tmp_path / "out"),
        "training.max_steps": steps,
        "training.logging_steps": 1,
        "training.save_steps": 3,
        "training.max_length": 1024,
        "data.synthetic_rows": 12,
        "data.synthetic_words": "[80, 160]",
        "data.max_length": 1024,
        "training.disable_tqdm": "true",
        "swaa.sliding_window_size": 32,
        "swaa.keep_first": 4,
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from swaa_train.run import run_training

    tmp_path = tmp_path_factory.mktemp("demo")
    trainer = run_training("demo", _demo_overrides(tmp_path, steps=6))
    return tmp_path / "out", trainer


def test_demo_trains_with_falling_loss_and_writes_outputs(demo_run):
    out, trainer = demo_run
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    for name in ("adapter_model.safetensors", "adapter_config.json", "swaa_config.json", "README.md"):
        assert (out / name).is_file(), name
    assert json.loads((out / "swaa_config.json").read_text())["sliding_window_size"] == 32
    assert "window 32, keep_first 4" in (out / "README.md").read_text()
    for checkpoint in ("checkpoint-3", "checkpoint-6"):
        assert (out / checkpoint / "swaa_config.json").is_file()


def test_reloading_base_adapter_and_config_reproduces_logits(demo_run):
    from peft import PeftModel

    from swaa_train.model import load_model
    from swaa_train.recipe import ModelArgs

    out, trainer = demo_run
    model = trainer.model.eval()
    ids = torch.randint(0, 500, (1, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    # A random-init base is saved beside the adapter, since it exists nowhere else.
    base = load_model(ModelArgs(str(out / "base-model"), dtype="float32"), SWAAConfig.load(out))
    reloaded = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_supervised_positions_loss_equals_transformers_loss(demo_run):
    _, trainer = demo_run
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    calls = []
    handle = model.get_base_model().lm_head.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
    handle.remove()
    assert not calls, "the LM head ran over every position"
    with torch.no_grad():
        reference = model(**batch).loss  # transformers' ForCausalLMLoss over the full logits
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_resume_continues_the_same_run(tmp_path, demo_run):
    from swaa_train.run import run_training

    _, straight = demo_run
    first = run_training("demo", _demo_overrides(tmp_path, steps=3, **{"training.max_steps": 3}))
    assert (tmp_path / "out" / "checkpoint-3").is_dir()
    resumed = run_training(
        "demo",
        _demo_overrides(
            tmp_path, steps=6, **{"training.resume_from_checkpoint": str(tmp_path / "out" / "checkpoint-3")}
        ),
    )
    assert resumed.state.global_step == 6
    losses = lambda t: [round(log["loss"], 4) for log in t.state.log_history if "loss" in log]  # noqa: E731
    assert losses(resumed)[-3:] == losses(straight)[-3:]
    assert first.state.global_step == 3


# ------------------------------------------------------------------------------------------
# What a run writes beside the adapter: recipe.yaml, loss.png
# ------------------------------------------------------------------------------------------
def test_recipe_yaml_in_output_and_checkpoints_reruns_the_same_recipe(demo_run):
    from swaa_train.recipe import load_recipe

    out, _ = demo_run
    saved = [out / "recipe.yaml", out / "checkpoint-3" / "recipe.yaml", out / "checkpoint-6" / "recipe.yaml"]
    assert len({path.read_text() for path in saved}) == 1
    rerun, raw = load_recipe(str(out / "recipe.yaml"))
    original, _ = load_recipe("demo", _demo_overrides(out.parent, steps=6))
    for section in ("model", "swaa", "lora", "data", "export", "memory"):
        assert getattr(rerun, section) == getattr(original, section), section
    assert rerun.training.to_dict() == original.training.to_dict()
    # Defaults are written out for this package's sections (so a changed default cannot change a rerun).
    assert raw["lora"]["dropout"] == 0.0 and raw["data"]["eval_fraction"] is None
    assert raw["swaa"]["sliding_window_size"] == 32  # the command-line override, not the file's 128


def test_recipe_yaml_never_holds_the_hub_token():
    from swaa_train.recipe import load_recipe, resolved_recipe

    recipe, raw = load_recipe("demo", ["training.hub_token=hf_secretSECRET", "training.max_steps=3"])
    text = yaml.safe_dump(resolved_recipe(recipe, raw))
    assert "hf_secretSECRET" not in text and "max_steps: 3" in text


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_loss_png_written_at_the_end(demo_run):
    out, _ = demo_run
    assert _png_size(out / "loss.png") == (600, 400)  # figsize 6 x 4 inches at 100 dpi


def test_loss_curve_and_plot_without_matplotlib(tmp_path, monkeypatch):

    history = [
        {"loss": 2.5, "step": 1},
        {"loss": 2.0, "step": 2},
        {"eval_loss": 2.2, "step": 2},
        {"loss": 1.5, "step": 3},
        {"train_runtime": 1.0, "step": 3},
    ]
    assert loss_curve(history) == {"loss": ([1, 2, 3], [2.5, 2.0, 1.5]), "eval_loss": ([2], [2.2])}
    assert write_loss_plot(history, tmp_path / "a.png") == tmp_path / "a.png"
    assert write_loss_plot([{"train_runtime": 1.0, "step": 3}], tmp_path / "b.png") is None
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    assert write_loss_plot(history, tmp_path / "c.png") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


# ------------------------------------------------------------------------------------------
# Evaluation during training
# ------------------------------------------------------------------------------------------
def test_eval_fraction_holds_out_samples():
    from swaa_train.model import load_config, load_tokenizer
    from swaa_train.recipe import load_recipe
    from swaa_train.run import build_datasets

    recipe, _ = load_recipe("demo", ["data.synthetic_rows=12", "data.synthetic_words=[80, 160]"])
    tokenizer, config = load_tokenizer(recipe.model), load_config(recipe.model)
    everything, none = build_datasets(recipe, tokenizer, config)
    recipe.data.eval_fraction = 0.25
    train, held_out = build_datasets(recipe, tokenizer, config, seed=0)
    samples = lambda d: {tuple(ids) for ids in d["input_ids"]}  # noqa: E731
    assert none is None and len(everything) == 12 and (len(train), len(held_out)) == (9, 3)
    assert not samples(train) & samples(held_out) and samples(train) | samples(held_out) == samples(everything)


def test_eval_path_rows_are_tokenized_and_filtered_like_the_training_rows(tmp_path):
    from swaa_train.data import build_sft_dataset
    from swaa_train.model import load_config, load_tokenizer
    from swaa_train.recipe import load_recipe
    from swaa_train.run import build_datasets
    from swaa_train.synthetic import make_longqa_rows, write_parquet

    rows = make_longqa_rows(5, split="eval", min_words=80, max_words=160)
    path = write_parquet(tmp_path / "held_out.parquet", rows)
    overrides = [
        "data.synthetic_rows=4",
        "data.synthetic_words=[40, 60]",
        f"data.eval_path={path}",
        "data.max_length=210",
    ]
    recipe, _ = load_recipe("demo", overrides)
    tokenizer = load_tokenizer(recipe.model)
    train, evaluation = build_datasets(recipe, tokenizer, load_config(recipe.model))
    expected = build_sft_dataset(rows, tokenizer, max_length=210)
    assert evaluation["input_ids"] == expected["input_ids"] and len(train) <= 4
    assert 0 < len(evaluation) < 5  # data.max_length dropped the longer held-out rows too


def test_eval_split_loss_is_logged(tmp_path):
    from swaa_train.run import run_training

    overrides = {
        "data.eval_fraction": 0.25,
        "training.eval_strategy": "steps",
        "training.eval_steps": 2,
        "training.per_device_eval_batch_size": 1,
    }
    trainer = run_training("demo", _demo_overrides(tmp_path, steps=4, **overrides))
    logged = [(log["step"], log["eval_loss"]) for log in trainer.state.log_history if "eval_loss" in log]
    assert [step for step, _ in logged] == [2, 4]
    # The logged eval loss is transformers' loss over the full logits of the eval batches, averaged.
    model = trainer.model.eval()
    with torch.no_grad():
        losses = [model(**trainer._prepare_inputs(batch)).loss for batch in trainer.get_eval_dataloader()]
    torch.testing.assert_close(torch.stack(losses).mean().item(), logged[-1][1], atol=1e-4, rtol=1e-4)
    assert "eval_loss" in loss_curve(trainer.state.log_history)


def test_eval_strategy_without_eval_data_is_refused(tmp_path):
    from swaa_train.run import run_training

    with pytest.raises(ValueError, match="training.eval_strategy='steps' needs evaluation data.*data.eval_path"):
        run_training("demo", _demo_overrides(tmp_path, steps=2, **{"training.eval_strategy": "steps"}))


# ------------------------------------------------------------------------------------------
# Chat templates: applied before tokenizing, saved with the tokenizer
# ------------------------------------------------------------------------------------------
MARKED_TEMPLATE = (
    "{%- for m in messages %}<|im_start|>{{ m.role }} says:\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant says:\n{% endif %}"
)


@pytest.mark.parametrize("given_as", ["inline", "file", "trl_path"])
def test_chat_template_renders_the_data_and_is_saved(given_as, tmp_path):
    import jinja2

    from swaa_train.recipe import load_recipe
    from swaa_train.run import build_trainer, load_training_rows

    template_file = tmp_path / "marked.jinja"
    template_file.write_text(MARKED_TEMPLATE)
    setting = {
        "inline": {"data.chat_template": json.dumps(MARKED_TEMPLATE)},
        "file": {"data.chat_template": str(template_file)},
        "trl_path": {"training.chat_template_path": str(template_file)},
    }[given_as]
    recipe, raw = load_recipe("demo", _demo_overrides(tmp_path, steps=1, **{"training.packing": "false", **setting}))
    trainer = build_trainer(recipe, raw)
    tokenizer = trainer.processing_class
    # The first sample is the first row rendered by the template itself, token for token.
    row = load_training_rows(recipe.data)[0]
    messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    expected = tokenizer(jinja2.Template(MARKED_TEMPLATE).render(messages=messages), add_special_tokens=False)
    assert trainer.train_dataset[0]["input_ids"] == expected["input_ids"]
    trainer.save_model()
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == MARKED_TEMPLATE


def test_chat_template_errors_name_the_field(tmp_path):
    from swaa_train.recipe import load_recipe
    from swaa_train.run import build_trainer

    for setting, message in [
        ({"data.chat_template": str(tmp_path / "missing.jinja")}, "data.chat_template: .* neither an existing file"),
        ({"training.chat_template_path": "Qwen/Qwen3-0.6B"}, "training.chat_template_path=.*data.chat_template"),
    ]:
        recipe, raw = load_recipe("demo", _demo_overrides(tmp_path, steps=1, **setting))
        with pytest.raises(ValueError, match=message):
            build_trainer(recipe, raw)


# ------------------------------------------------------------------------------------------
# A model set up the reference code's way: its config object on model.config
# ------------------------------------------------------------------------------------------
def test_trainer_takes_the_settings_object_on_model_config(tmp_path):
    from datasets import Dataset
    from test_recipe import ReferenceStyleConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig

    from swaa_train.trainer import SWAATrainer, lora_config

    expected = SWAAConfig(6, 2, True, [1, 5, 7])  # layers 5 and 7 do not exist in the 3-layer model
    reference = apply_swaa(tiny_model("qwen3"), expected)
    model = tiny_model("qwen3")
    model.config.swaa_config = ReferenceStyleConfig(6, 2, True, [1, 5, 7])
    examples = _examples([30, 20, 25, 18], [6, 4, 10, 5], seed=3)
    dataset = Dataset.from_list(
        [
            {"input_ids": e["input_ids"], "completion_mask": [int(t != IGNORE_INDEX) for t in e["labels"]]}
            for e in examples
        ]
    )
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        max_length=64,
    )
    tokenizer = AutoTokenizer.from_pretrained("swaa_train/assets/tiny-qwen3")
    trainer = SWAATrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora_config(LoraArgs())
    )
    assert trainer.swaa_config == expected
    ids = torch.tensor([examples[0]["input_ids"]])
    with torch.no_grad():  # LoRA starts at zero: the model computes what apply_swaa(expected) computes
        torch.testing.assert_close(trainer.model(input_ids=ids).logits, reference(input_ids=ids).logits)
    trainer.train()
    trainer.save_model()
    assert SWAAConfig.load(tmp_path / "out") == expected
    assert json.loads(model.config.to_json_string())["swaa_config"] == expected.to_dict()


# ------------------------------------------------------------------------------------------
# Logging: training.report_to
# ------------------------------------------------------------------------------------------
def test_report_to_is_read_as_a_name_or_a_list():
    from swaa_train.recipe import load_recipe

    one, _ = load_recipe("demo", ["training.report_to=tensorboard"])
    both, _ = load_recipe("demo", ["training.report_to=[tensorboard, wandb]", "training.run_name=swa2k-try"])
    assert one.training.report_to == ["tensorboard"]
    assert both.training.report_to == ["tensorboard", "wandb"] and both.training.run_name == "swa2k-try"


def test_report_to_tensorboard_logs_the_losses(tmp_path):
    pytest.importorskip("tensorboard")  # the dev extra installs it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from swaa_train.run import run_training

    overrides = {"training.report_to": "tensorboard", "training.save_strategy": "no"}
    trainer = run_training("demo", _demo_overrides(tmp_path, steps=3, **overrides))
    (run,) = (tmp_path / "out" / "runs").iterdir()
    events = EventAccumulator(str(run))
    events.Reload()
    logged = [(e.step, round(e.value, 4)) for e in events.Scalars("train/loss")]
    assert logged == [(log["step"], round(log["loss"], 4)) for log in trainer.state.log_history if "loss" in log]
    assert len(logged) == 3
