"""Evaluation: answer matching, the settings ladder, and an end-to-end run on the demo model."""

from __future__ import annotations

import json

import pytest
from test_export import DEMO_SWAA, make_adapter_dir

from swaa_train import evaluate
from swaa_train.cli import main
from swaa_train.evaluate import (
    EvalSetting,
    Response,
    default_settings,
    eval_row,
    final_answer,
    generate_responses,
    is_correct,
    length_bin,
    normalize_answer,
    run_evaluation,
    verdict,
)
from swaa_train.inference import format_prompt, load_swaa_model
from swaa_train.swaa_config import SWAAConfig
from swaa_train.synthetic import make_longqa_rows, write_parquet


@pytest.mark.parametrize(
    "response, answer, expected",
    [
        ("The access code of the amber vault is 4821.", "4821", True),
        ("It is 48210.", "4821", False),  # whole words only
        ("mira   OKAFOR keeps the archive", "Mira Okafor", True),
        ("Tomas Okafor", "Mira Okafor", False),
        ("The correct answer is (B).", "B", True),
        ("(C) since the text says so", "B", False),
        ("B. The second one", "B", True),
        ("Answer: D", "D", True),
        ("The answer is a dog.", "A", False),  # choice letters are upper case
        ("founded in 1642", ["1624", "1642"], True),
        ("", "4821", False),
    ],
)
def test_is_correct(response, answer, expected):
    assert is_correct(response, answer) is expected


def test_normalize_answer():
    assert normalize_answer("  The  Amber-Vault, an old one!") == "amber vault old one"


def test_default_settings_ladder():
    trained = SWAAConfig(128, 8, True, [1, 3])
    settings = default_settings(trained, num_layers=4, has_adapter=True)
    assert len(settings) == 10 and [s.adapter for s in settings] == [False] * 5 + [True] * 5
    swaa = [s.swaa for s in settings[:5]]
    assert swaa == [
        SWAAConfig(),
        SWAAConfig(128),
        SWAAConfig(128, 8),
        SWAAConfig(128, 8, True),
        SWAAConfig(128, 8, True, [1, 3]),
    ]
    untrained = default_settings(SWAAConfig(64), num_layers=4, has_adapter=False)
    assert untrained[-1].swaa.non_sliding_layers == [1, 3] and untrained[2].swaa.keep_first == 0
    with pytest.raises(ValueError, match="sliding_window_size"):
        default_settings(SWAAConfig(), num_layers=4, has_adapter=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    adapter = make_adapter_dir(root)
    rows = make_longqa_rows(4, split="eval", min_words=20, max_words=30)
    return adapter, write_parquet(root / "eval.parquet", rows), rows


def test_eval_end_to_end_writes_table_samples_and_accuracy(demo, tmp_path, capfd):
    adapter, data, rows = demo
    out = tmp_path / "eval"
    main(
        [
            "eval",
            "--model",
            str(adapter),
            "--data",
            str(data),
            "--out",
            str(out),
            "--limit",
            "2",
            "--max-new-tokens",
            "2",
            "--batch-size",
            "2",
        ]
    )
    summary = json.loads((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(summary) == 10 and len(samples) == 20
    assert summary[4]["swaa"] == SWAAConfig(16, 4, True, DEMO_SWAA.non_sliding_layers).to_dict()
    for row in summary:
        mine = [s for s in samples if s["setting"] == row["setting"]]
        assert [s["answer"] for s in mine] == [r["answer"] for r in rows[:2]]
        assert all(s["correct"] == is_correct(s["response"], s["answer"]) for s in mine)
        assert row["correct"] == sum(s["correct"] for s in mine) and row["total"] == 2
    reference = [s["response"] for s in samples if s["setting"] == "full attention"]
    for row in summary:
        mine = [s["response"] for s in samples if s["setting"] == row["setting"]]
        assert row["same_as_reference"] == sum(a == b for a, b in zip(mine, reference)) / 2
    saved = {row["setting"]: row["kv_cache_saved"] for row in summary}
    # Only layers that never look past window + sinks (no FA decode) drop keys.
    assert saved["naive SWA"] > saved["SWA + sinks"] > 0
    assert saved["full attention"] == saved["SWA + sinks + FA decode"] == 0
    table = capfd.readouterr().out
    assert table == (out / "results.md").read_text()
    assert "| SWA + sinks + FA decode + interleaving + adapter | yes |" in table


def test_eval_settings_file_and_missing_adapter(demo, tmp_path):
    adapter, data, _ = demo
    settings = tmp_path / "settings.yaml"
    settings.write_text("- {name: swa64, swaa: {sliding_window_size: 64, keep_first: 2}}\n")
    out = tmp_path / "eval"
    main(
        [
            "eval",
            "--model",
            str(adapter / "base-model"),
            "--data",
            str(data),
            "--out",
            str(out),
            "--limit",
            "1",
            "--max-new-tokens",
            "2",
            "--settings",
            str(settings),
        ]
    )
    (row,) = json.loads((out / "results.json").read_text())
    assert row["setting"] == "swa64" and row["swaa"]["keep_first"] == 2 and not row["adapter"]
    settings.write_text("- {name: tuned, adapter: true, swaa: {sliding_window_size: 64}}\n")
    with pytest.raises(ValueError, match="no adapter"):
        main(
            [
                "eval",
                "--model",
                str(adapter / "base-model"),
                "--data",
                str(data),
                "--out",
                str(out),
                "--settings",
                str(settings),
            ]
        )


def test_eval_data_needs_prompt_and_answer(demo, tmp_path):
    adapter, _, rows = demo
    bad = write_parquet(tmp_path / "bad.parquet", [{"prompt": r["prompt"]} for r in rows])
    with pytest.raises(ValueError, match="answer"):
        run_evaluation(str(adapter), str(bad), str(tmp_path / "out"))


# ------------------------------------------------------------------------------------------
# Scored as the SWAA paper scores: after </think>, the last "The correct answer is (X)", a judge
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "response, thinking, expected",
    [
        ("<think>maybe 12</think>\n\nIt is 4821.", False, "It is 4821."),
        ("so 12... </think> It is 4821. </think> Final: 7", True, "Final: 7"),  # the last </think>
        ("<think>still thinking about 4821", False, None),  # never finished
        ("reasoning about 4821 without an end", True, None),  # the template opened <think>
        ("It is 4821.", False, "It is 4821."),
    ],
)
def test_final_answer_is_the_text_after_think(response, thinking, expected):
    assert final_answer(response, thinking) == expected


@pytest.mark.parametrize(
    "response, answer, expected",
    [
        ("The correct answer is (A). On reflection, the correct answer is (C).", "A", False),
        ("The correct answer is (A). Wait. The correct answer is (C).", "C", True),  # the last one counts
        ("**The correct answer is (B)**", "B", True),
        ("The correct answer is D", "D", True),
        ("Answer: A ... The correct answer is (B)", "A", False),  # the reference's sentence wins
    ],
)
def test_multiple_choice_takes_the_last_correct_answer_sentence(response, answer, expected):
    assert is_correct(response, answer) is expected


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("The date matches. CORRECT", 1),
        ("It names another person, so WRONG.", 0),
        ("<think>Is it correct? It could be CORRECT</think> The answer differs. WRONG", 0),
        ("This answer is INCORRECT", None),  # not the word CORRECT
        ("Correct at first glance, but the year is off: wrong", 0),  # the last word counts
        ("no verdict", None),
    ],
)
def test_judge_verdict(reply, expected):
    assert verdict(reply) == expected


@pytest.mark.parametrize(
    "tokens, label",
    [(0, "0-16k"), (15_999, "0-16k"), (16_000, "16k-32k"), (100_000, "64k-128k"), (128_000, "128k+")],
)
def test_length_bins_are_the_reference_ones(tokens, label):
    assert length_bin(tokens) == label


def test_longmemeval_and_longbench_v2_rows():
    memeval = eval_row({"prompt": "p", "question": "q", "answer": "a", "question_type": "temporal-reasoning"}, 0)
    assert (memeval["prompt"], memeval["question_type"], memeval["choices"]) == ("p", "temporal-reasoning", None)
    columns = {"choice_A": "red", "choice_B": "blue", "choice_C": "green", "choice_D": "grey"}
    v2 = eval_row({"context": "CTX", "question": "Which?", "answer": "c", "domain": "Code", **columns}, 1)
    assert v2["choices"] == ["red", "blue", "green", "grey"] and v2["answer"] == "C" and v2["question_type"] == "Code"
    assert "CTX" in v2["prompt"] and "(C) green" in v2["prompt"] and "The correct answer is (X)" in v2["prompt"]
    as_list = eval_row({"prompt": "P", "question": "Which?", "answer": 1, "choices": ["x", "y"]}, 2)
    assert as_list["answer"] == "B" and as_list["prompt"] == "P"
    with pytest.raises(ValueError, match="row 3: a multiple-choice answer must be a letter"):
        eval_row({"prompt": "P", "answer": "yes", "choices": ["x", "y"]}, 3)
    with pytest.raises(ValueError, match="row 4: choices must hold 2 to 4"):
        eval_row({"prompt": "P", "answer": "A", "choices": ["x"]}, 4)


def test_generate_responses_marks_the_truncated(demo):
    from swaa_train.inference import generate, generate_ids, load_swaa_model

    adapter, _, rows = demo
    model, tokenizer = load_swaa_model(str(adapter), dtype="float32")
    prompts = [r["prompt"] for r in rows[:3]]
    plain = generate_responses(model, tokenizer, prompts, max_new_tokens=3, batch_size=2)
    assert [r.text for r in plain] == generate(model, tokenizer, prompts, max_new_tokens=3, batch_size=2)
    # Make the first token the model writes for row 0 its end-of-sequence token.
    encoded = tokenizer(format_prompt(tokenizer, prompts[0]), add_special_tokens=False, return_tensors="pt")
    first = int(generate_ids(model, encoded["input_ids"], max_new_tokens=1).sequences[0, 0])
    model.generation_config.eos_token_id = first
    stopped = generate_responses(model, tokenizer, prompts, max_new_tokens=3, batch_size=1)
    assert (stopped[0].text, stopped[0].truncated, stopped[0].new_tokens) == ("", False, 0)
    for prompt, response in zip(prompts[1:], stopped[1:]):
        encoded = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")
        ids = generate_ids(model, encoded["input_ids"], max_new_tokens=3).sequences[0].tolist()
        assert response.truncated == (first not in ids)
        assert response.new_tokens == (ids.index(first) if first in ids else 3)


def test_eval_scores_types_lengths_truncation_and_judge(demo, tmp_path, monkeypatch, capfd):
    """Scripted answers (the generation is replaced), scored per question type and prompt length."""
    adapter, _, _ = demo
    filler = "word " * 60
    rows = [  # (prompt, type, answer, the model's response, truncated, the judge's reply)
        ("short " + "q1", "single", "4821", "<think>hmm</think> It is 4821.", False, "CORRECT"),
        ("short " + "q2", "single", "Mira", "<think>Mira? no</think> Tomas.", False, "WRONG"),
        (filler + "q3", "multi", "1642", "It was 1642, and then", True, "CORRECT"),  # cut off: the rule only
        (filler + "q4", "multi", "a shell necklace", "Something from Hawaii", False, "CORRECT"),  # judge is kinder
    ]
    data = write_parquet(
        tmp_path / "memeval.parquet",
        [
            {"prompt": p, "question": f"question {i}", "answer": a, "question_type": t}
            for i, (p, t, a, *_) in enumerate(rows)
        ],
    )
    script = {p: (response, truncated) for p, _, _, response, truncated, _ in rows}
    verdicts = {f"question {i}": reply for i, (*_, reply) in enumerate(rows)}
    calls = []

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size=4, desc="", return_memory=False, **kw):
        calls.append((desc, max_new_tokens, len(prompts)))
        if desc == "judge":
            out = [Response(next(v for q, v in verdicts.items() if q + "\n" in p), False, 5) for p in prompts]
        else:
            out = [Response(*script[p], new_tokens=7) for p in prompts]
        return (out, None) if return_memory else out

    monkeypatch.setattr(evaluate, "generate_responses", fake_generate)
    settings = tmp_path / "settings.yaml"
    settings.write_text("- {name: swa16, swaa: {sliding_window_size: 16, keep_first: 4}}\n")
    _, tokenizer = load_swaa_model(str(adapter))
    tokens = [len(tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) for p, *_ in rows]
    edge = max(tokens[:2]) + 1  # the short prompts below the edge, the long ones above it
    assert min(tokens[2:]) >= edge
    argv = ["eval", "--model", str(adapter), "--data", str(data), "--out", str(tmp_path / "out")]
    main([*argv, "--settings", str(settings), "--judge-model", str(adapter / "base-model"), "--length-bins", str(edge)])
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (row["correct"], row["total"], row["truncated"]) == (2, 4, 1)  # the rule: q1 and q3
    assert (row["judge_correct"], row["judge_accuracy"]) == (2, 0.5)  # the judge: q1 and q4; q3 never asked
    assert calls == [("swa16", 2000, 4), ("judge", 512, 3)]  # the reference's default length; 3 asked
    assert row["by_question_type"] == {
        "multi": {"correct": 1, "total": 2, "accuracy": 0.5},
        "single": {"correct": 1, "total": 2, "accuracy": 0.5},
    }
    below, above = f"0-{edge}", f"{edge}+"
    assert row["by_prompt_length"] == {
        below: {"correct": 1, "total": 2, "accuracy": 0.5},
        above: {"correct": 1, "total": 2, "accuracy": 0.5},
    }
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [s["answer_text"] for s in samples] == [
        "It is 4821.",
        "Tomas.",
        "It was 1642, and then",
        "Something from Hawaii",
    ]
    assert [s["correct"] for s in samples] == [True, False, True, False]
    assert [s["judge"] for s in samples] == [1, 0, 0, 1] and [s["prompt_tokens"] for s in samples] == tokens
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| swa16 | no |" in table and "| 50.0% | 2/4 |" in table and "| 1/4 | 50.0% |" in table
    assert "### Accuracy by question type (judge)" in table and f"| setting | {below} | {above} |" in table
    assert capfd.readouterr().out.strip() == table.strip()
    # --max-prompt-tokens leaves the long prompts out before anything is generated.
    calls.clear()
    main([*argv, "--settings", str(settings), "--max-prompt-tokens", str(edge - 1), "--max-new-tokens", "5"])
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())
    assert row["total"] == 2 and calls == [("swa16", 5, 2)] and "judge_accuracy" not in row


def test_eval_on_longbench_v2_style_rows(demo, tmp_path, monkeypatch):
    adapter, _, _ = demo
    choices = {"choice_A": "red", "choice_B": "blue", "choice_C": "green", "choice_D": "grey"}
    data = write_parquet(
        tmp_path / "v2.parquet",
        [
            {"context": "c1", "question": "q1", "answer": "B", "domain": "Code", **choices},
            {"context": "c2", "question": "q2", "answer": "D", "domain": "Code", **choices},
            {"context": "c3", "question": "q3", "answer": "A", "domain": "Long dialogue", **choices},
        ],
    )
    replies = iter(
        [
            "<think>(A)?</think>The correct answer is (A). No: the correct answer is (B).",
            "The correct answer is (D)",  # no </think> while the prompt is not a thinking one: scored as is
            "Answer: (A) The correct answer is (C)",
        ]
    )

    def fake_generate(model, tokenizer, prompts, max_new_tokens, return_memory=False, **kw):
        assert all("The correct answer is (X)" in p for p in prompts)
        out = [Response(next(replies), False, 9) for _ in prompts]
        return (out, None) if return_memory else out

    monkeypatch.setattr(evaluate, "generate_responses", fake_generate)
    settings = [EvalSetting("swa16", SWAAConfig(16, 4))]
    (row,) = run_evaluation(str(adapter), str(data), str(tmp_path / "out"), settings=settings)
    assert (row["correct"], row["total"]) == (2, 3)
    assert row["by_question_type"]["Code"] == {"correct": 2, "total": 2, "accuracy": 1.0}
    assert row["by_question_type"]["Long dialogue"]["correct"] == 0
