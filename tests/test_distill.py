"""Self-distillation: responses of the full-attention model, judged, in the trainer's layout."""

from __future__ import annotations

import pandas as pd
import pytest
from test_export import make_adapter_dir
from transformers import AutoTokenizer

import swaa_train.inference as inference
from swaa_train import distill
from swaa_train.cli import main
from swaa_train.data import build_sft_dataset, load_rows
from swaa_train.distill import judge_with_model, run_self_distill
from swaa_train.evaluate import Response, is_correct
from swaa_train.synthetic import make_longqa_rows, write_parquet


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    base = make_adapter_dir(root) / "base-model"
    rows = make_longqa_rows(4, split="train", min_words=40, max_words=60)
    return base, write_parquet(root / "fusang_long.parquet", rows), rows


def test_distill_end_to_end_writes_what_the_trainer_reads(demo, tmp_path, capfd):
    base, data, rows = demo
    out = tmp_path / "distilled.parquet"
    main(
        [
            "distill",
            "--model",
            str(base),
            "--data",
            str(data),
            "--out",
            str(out),
            "--limit",
            "3",
            "--max-new-tokens",
            "4",
        ]
    )
    written = pd.read_parquet(out)
    assert len(written) == 3 and {"question", "answer", "prompt", "response", "judge"} <= set(written.columns)
    assert written["prompt"].tolist() == [r["prompt"] for r in rows[:3]]
    expected = [int(is_correct(r, a)) for r, a in zip(written["response"], written["answer"])]
    assert written["judge"].tolist() == expected
    assert "responses judged correct" in capfd.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(base)
    dataset = build_sft_dataset(load_rows(out), tokenizer, format="fusang_long", judge_filter=False)
    assert len(dataset) == 3


def test_judged_rows_are_filtered_by_the_loader(demo, tmp_path, monkeypatch):
    base, data, rows = demo

    # A teacher that answers right on even rows only.
    def fake_generate(model, tokenizer, prompts, **kwargs):
        texts = [f"It is {rows[i]['answer']}." if i % 2 == 0 else "I do not know." for i in range(len(prompts))]
        return [Response(text, truncated=False, new_tokens=4) for text in texts]

    monkeypatch.setattr(distill, "generate_responses", fake_generate)
    out = tmp_path / "distilled.parquet"
    stats = run_self_distill(str(base), str(data), str(out))
    assert stats["rows"] == 4 and stats["judged_correct"] == 2
    assert pd.read_parquet(out)["judge"].tolist() == [1, 0, 1, 0]
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert len(build_sft_dataset(load_rows(out), tokenizer, format="fusang_long")) == 2


def test_judge_model_verdicts(monkeypatch):
    seen = []

    def fake_generate(model, tokenizer, prompts, **kwargs):
        seen.extend(prompts)
        return ["It names the same city. CORRECT", "The date differs. WRONG", "<think>wrong? no</think> correct"]

    monkeypatch.setattr(inference, "generate", fake_generate)
    rows = [{"question": f"q{i}", "answer": f"a{i}", "prompt": "p"} for i in range(3)]
    assert judge_with_model(None, None, rows, ["r0", "r1", "r2"]) == [1, 0, 1]
    assert "Gold answer: a1" in seen[1] and "Generated answer: r1" in seen[1]


def test_truncated_or_unfinished_responses_are_never_training_data(demo, tmp_path, monkeypatch):
    base, data, rows = demo
    scripted = [
        Response(f"<think>it must be {rows[0]['answer']}</think> It is {rows[0]['answer']}.", False, 20),
        Response(f"It is {rows[1]['answer']} because", True, 256),  # right, but cut off
        Response(f"<think>maybe {rows[2]['answer']}", True, 256),  # still thinking
        Response("<think>no idea</think> I do not know.", False, 9),
    ]
    seen = {}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, **kwargs):
        seen["max_new_tokens"] = max_new_tokens
        return scripted[: len(prompts)]

    monkeypatch.setattr(distill, "generate_responses", fake_generate)
    out = tmp_path / "distilled.parquet"
    stats = run_self_distill(str(base), str(data), str(out))
    written = pd.read_parquet(out)
    assert written["judge"].tolist() == [1, 0, 0, 0] and written["truncated"].tolist() == [False, True, True, False]
    assert stats["truncated"] == 2 and stats["judged_correct"] == 1
    assert seen["max_new_tokens"] == 2000  # the reference's length for a model that does not open <think>
    assert "question_type" not in written.columns and "choices" not in written.columns
