"""A training run from a recipe: what it never writes, what it reuses, and the models it loads.

- a token in the recipe reaches huggingface_hub but no written file and no output;
- resuming reuses the saved random-init base and passes over a checkpoint left incomplete;
- a step without supervised tokens stops the run;
- remote-code models load (trust_remote_code), and attention dropout is switched off.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from swaa_train.cli import main
from swaa_train.swaa_config import SWAAConfig

ROOT = Path(__file__).resolve().parent.parent
DEMO_ASSETS = ROOT / "swaa_train" / "assets" / "tiny-qwen3"
SECRET = "hf_sentinelRecipeTOKENneverWritten"
# Two optimizer steps on short synthetic rows, a checkpoint at step 2.
TINY = [
    "training.max_steps=2",
    "training.save_steps=2",
    "training.logging_steps=1",
    "training.max_length=1024",
    "training.disable_tqdm=true",
    "data.synthetic_rows=8",
    "data.synthetic_words=[80,160]",
    "data.max_length=1024",
    "swaa.sliding_window_size=32",
    "swaa.keep_first=4",
]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def _everything_printed(buffer: io.StringIO):
    """stdout, stderr and the log records of the libraries a run goes through, into `buffer`."""
    handler = logging.StreamHandler(buffer)
    loggers = [logging.getLogger(name) for name in ("swaa_train", "transformers", "trl", "accelerate", "peft")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.addHandler(handler)
        log.setLevel(logging.DEBUG if log.name == "swaa_train" else logging.INFO)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.removeHandler(handler)
            log.setLevel(level)


@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
    """The demo trained with training.hub_token set, merged, then shown by `push --dry-run`."""
    out = tmp_path_factory.mktemp("token") / "out"
    saved, printed = os.environ.pop("HF_TOKEN", None), io.StringIO()
    try:
        with _everything_printed(printed):
            main(["train", "--recipe", "demo", *TINY, f"training.output_dir={out}", f"training.hub_token={SECRET}"])
            handed_over = os.environ.pop("HF_TOKEN", None)
            main(["merge", str(out), str(out.parent / "merged")])
            main(["push", str(out), "--repo-id", "me/demo", "--dry-run"])
    finally:
        os.environ.pop("HF_TOKEN", None)
        if saved is not None:
            os.environ["HF_TOKEN"] = saved
    return out, handed_over, printed.getvalue()


def test_a_recipe_token_is_used_but_never_written_or_printed(token_run):
    out, handed_over, printed = token_run
    assert handed_over == SECRET  # huggingface_hub gets it (HF_TOKEN, inside the process)
    written = _files(out.parent)
    for name in ("out/training_args.bin", "out/README.md", "out/checkpoint-2/README.md", "merged/README.md"):
        assert name in written
    assert [name for name, data in written.items() if SECRET.encode() in data] == []
    assert "Training on 8 samples" in printed and "--- README.md ---" in printed  # the output was captured
    assert SECRET not in printed
    assert "hub_token" not in (out / "README.md").read_text()  # the card's recipe (recipe.yaml) leaves it out
    assert torch.load(out / "training_args.bin", weights_only=False).hub_token is None


def test_push_dry_run_masks_a_token_a_card_already_holds(token_run, tmp_path, capfd):
    out = token_run[0]
    folder = tmp_path / "adapter"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns("checkpoint-*", "base-model"))
    (folder / "README.md").write_text(f"# old card\n```yaml\ntraining:\n  hub_token: {SECRET}\n  seed: 0\n```\n")
    main(["push", str(folder), "--repo-id", "me/demo", "--dry-run"])
    shown = capfd.readouterr().out
    assert SECRET not in shown
    assert "  hub_token: <hidden>\n  seed: 0" in shown and "README.md (secrets masked)" in shown


# ------------------------------------------------------------------------------------------
# Resume: the saved base is reused, an incomplete checkpoint is passed over
# ------------------------------------------------------------------------------------------
def test_resume_reuses_the_random_base_and_skips_an_incomplete_checkpoint(token_run, tmp_path, caplog):
    from swaa_train.run import run_training

    out = tmp_path / "out"
    shutil.copytree(token_run[0], out)
    base_before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "base-model").iterdir()}
    (out / "checkpoint-3").mkdir()  # a run killed while writing checkpoint-3
    (out / "checkpoint-3" / "adapter_config.json").write_text("{")
    caplog.set_level(logging.INFO)
    trainer = run_training(
        "demo",
        [
            *TINY,
            f"training.output_dir={out}",
            "training.max_steps=3",
            "training.resume_from_checkpoint=true",
            "export.model_card=false",
        ],
    )
    assert not (out / "checkpoint-3" / "README.md").exists()  # export.model_card=false
    assert (out / "checkpoint-2" / "README.md").is_file()
    assert trainer.state.global_step == 3  # resumed at checkpoint-2, trained step 3
    assert f"Skipping and removing {out / 'checkpoint-3'}: incomplete" in caplog.text
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
    base_after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "base-model").iterdir()}
    assert base_after == base_before  # loaded, not regenerated nor rewritten
    assert json.loads((out / "base-model" / "random_init.json").read_text())["seed"] == 0


# ------------------------------------------------------------------------------------------
# A step that would learn nothing
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_length", [30, 64])
def test_a_step_without_supervised_tokens_stops_the_run(tmp_path, max_length):
    """Packing cuts each 40-token sample (answer: its last 10 tokens) to max_length: at 30 no
    answer token is left, as when training.max_length is below the samples' length."""
    from conftest import tiny_model
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig

    from swaa_train.attention import register_swaa_attention
    from swaa_train.trainer import SWAATrainer

    register_swaa_attention()
    swaa = SWAAConfig(sliding_window_size=8, keep_first=2)
    ids = torch.randint(3, 90, (4, 40), generator=torch.Generator().manual_seed(0)).tolist()
    dataset = Dataset.from_dict({"input_ids": ids, "completion_mask": [[0] * 30 + [1] * 10] * 4})
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        max_length=max_length,
        packing=True,
        packing_strategy="bfd",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        bf16=False,
    )
    model = tiny_model("qwen3", attn_implementation="swaa")
    model.config.swaa_config = swaa.to_dict()
    trainer = SWAATrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(DEMO_ASSETS),
        swaa_config=swaa,
    )
    if max_length >= 40:
        assert trainer.train().training_loss > 0
    else:
        with pytest.raises(ValueError, match="step 1: the batch holds no supervised"):
            trainer.train()


# ------------------------------------------------------------------------------------------
# Models: remote code, attention dropout
# ------------------------------------------------------------------------------------------
REMOTE_CONFIG = """
from transformers import Qwen3Config


class TinyRemoteConfig(Qwen3Config):
    model_type = "tiny_remote"
"""
REMOTE_MODEL = """
from transformers import Qwen3ForCausalLM

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteForCausalLM(Qwen3ForCausalLM):
    config_class = TinyRemoteConfig
"""


def _remote_code_model(folder: Path) -> Path:
    """A local model folder whose architecture exists only in its own .py files (auto_map)."""
    folder.mkdir()
    config = json.loads((DEMO_ASSETS / "config.json").read_text())
    config.update(
        model_type="tiny_remote",
        architectures=["TinyRemoteForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
            "AutoModelForCausalLM": "modeling_tiny_remote.TinyRemoteForCausalLM",
        },
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_tiny_remote.py").write_text(REMOTE_MODEL)
    return folder


def test_a_remote_code_model_loads_with_swaa_and_trains(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from swaa_train.attention import apply_swaa
    from swaa_train.model import load_model
    from swaa_train.recipe import ModelArgs
    from swaa_train.run import run_training

    folder = _remote_code_model(tmp_path / "remote")
    swaa = SWAAConfig(sliding_window_size=16, keep_first=2, force_fa_decode=False)
    torch.manual_seed(0)
    model = load_model(ModelArgs(str(folder), from_config=True, dtype="float32", trust_remote_code=True), swaa)
    assert type(model).__name__ == "TinyRemoteForCausalLM"
    # The same weights in transformers' own Qwen3 class give the same logits under SWAA.
    reference = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(DEMO_ASSETS), dtype=torch.float32)
    reference.load_state_dict(model.state_dict())
    reference = apply_swaa(reference, swaa)
    ids = torch.randint(3, 2000, (1, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)
    with pytest.raises(ValueError, match="trust_remote_code"):  # refused without the opt-in
        load_model(ModelArgs(str(folder), from_config=True, dtype="float32"), swaa)

    out = tmp_path / "out"
    model_args = [f"model.name_or_path={folder}", f"model.tokenizer={DEMO_ASSETS}", "model.trust_remote_code=true"]
    trainer = run_training("demo", [*TINY, *model_args, f"training.output_dir={out}", "training.max_steps=1"])
    assert trainer.state.global_step == 1 and (out / "adapter_model.safetensors").is_file()


def test_attention_dropout_is_switched_off_before_anything_is_written(tmp_path, caplog):
    from transformers import GPT2Config

    from swaa_train.model import load_config, load_model
    from swaa_train.recipe import ModelArgs

    GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=97, n_positions=128).save_pretrained(tmp_path / "gpt2")
    args = ModelArgs(str(tmp_path / "gpt2"), from_config=True, dtype="float32")
    caplog.set_level(logging.WARNING)
    config = load_config(args)
    assert config.attn_pdrop == 0.0 and config.resid_pdrop == 0.1  # only the attention's dropout
    assert "attn_pdrop=0.1 in the model config: set to 0" in caplog.text
    model = load_model(args, SWAAConfig(sliding_window_size=8, keep_first=2), config=config).train()
    ids = torch.randint(0, 97, (1, 32), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()  # SWAA attention refuses dropout > 0 in training


@pytest.mark.parametrize(
    "data_max, training_max, positions, expected",
    [
        (1536, 512, 4096, (512, "training.max_length")),  # the smaller training.max_length wins, with a warning
        (None, 512, 4096, (512, "training.max_length")),
        (256, 512, 4096, (256, "data.max_length")),
        (None, None, 1024, (1024, "the model's max_position_embeddings")),
        (None, 2048, 1024, (1024, "the model's max_position_embeddings")),
    ],
)
def test_samples_are_limited_by_the_smallest_length_setting(data_max, training_max, positions, expected, caplog):
    from transformers import Qwen3Config

    from swaa_train.recipe import build_recipe
    from swaa_train.run import sample_length_limit

    recipe = build_recipe(
        {
            "model": {"name_or_path": "some/model"},
            "data": {"path": "synthetic", "max_length": data_max},
            "training": {"output_dir": "out", "use_cpu": True, "bf16": False, "max_length": training_max},
        }
    )
    caplog.set_level(logging.WARNING)
    assert sample_length_limit(recipe, Qwen3Config(max_position_embeddings=positions)) == expected
    warned = "data.max_length=1536 is larger than training.max_length=512: samples longer than 512 tokens are dropped"
    assert (warned in caplog.text) == (data_max == 1536)


def test_a_saved_base_is_reused_only_when_whole_and_of_the_same_seed(tmp_path, caplog):
    from swaa_train.recipe import build_recipe
    from swaa_train.run import saved_random_base

    def recipe(seed):
        return build_recipe(
            {
                "model": {"name_or_path": "some/model", "from_config": True},
                "data": {"path": "synthetic"},
                "training": {"output_dir": str(tmp_path), "use_cpu": True, "bf16": False, "seed": seed},
            }
        )

    base = tmp_path / "base-model"
    assert saved_random_base(recipe(0), str(tmp_path)) is None  # none yet
    base.mkdir()
    (base / "config.json").write_text("{}")
    caplog.set_level(logging.WARNING)
    assert saved_random_base(recipe(0), str(tmp_path)) is None  # stopped before its weights were written
    assert "has no weights" in caplog.text
    (base / "model.safetensors").write_bytes(b"weights")
    (base / "random_init.json").write_text(json.dumps({"seed": 0, "config": "some/model"}))
    assert saved_random_base(recipe(0), str(tmp_path)) == str(base)
    with pytest.raises(ValueError, match=r"training.seed=3, but .* was generated with seed 0"):
        saved_random_base(recipe(3), str(tmp_path))


def test_a_checkpoint_is_renamed_into_place_only_when_complete(tmp_path, monkeypatch, caplog):
    """A run killed while writing checkpoint-4 leaves no checkpoint-4, only a temporary folder
    that the next run removes; resuming continues from checkpoint-2."""
    from transformers import Trainer

    from swaa_train.run import run_training

    out = tmp_path / "out"
    original, calls = Trainer._save_rng_state, []

    def dies_at_the_second_checkpoint(self, output_dir):
        calls.append(output_dir)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while writing the checkpoint")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", dies_at_the_second_checkpoint)
    overrides = [*TINY, f"training.output_dir={out}", "training.max_steps=4"]
    with pytest.raises(KeyboardInterrupt):
        run_training("demo", overrides)
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (out / "checkpoint-4").exists()
    assert (out / ".tmp-checkpoint-4" / "checkpoint-4" / "adapter_model.safetensors").is_file()  # half written
    monkeypatch.setattr(Trainer, "_save_rng_state", original)
    caplog.set_level(logging.INFO)
    trainer = run_training("demo", [*overrides, "training.resume_from_checkpoint=true"])
    assert trainer.state.global_step == 4
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())
    assert f"Skipping and removing {out / '.tmp-checkpoint-4'}" in caplog.text
