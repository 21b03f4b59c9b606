"""SWAATrainer: packing, full_from, the supervised-positions loss, saving and resuming."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import VOCAB, tiny_model
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from swaa_train.attention import IGNORE_INDEX, apply_swaa, full_from_of_labels
from swaa_train.swaa_config import SWAAConfig
from swaa_train.trainer import FullFromCollator

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
