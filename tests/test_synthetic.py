"""The synthetic long-context QA generator (swaa_train/synthetic.py)."""

from __future__ import annotations

import re

import pytest
from transformers import AutoTokenizer

from swaa_train.data import load_rows
from swaa_train.demo_assets import TINY_QWEN3_DIR
from swaa_train.synthetic import PROMPT_HEADER, make_longqa_rows, split_entities, write_parquet

FUSANG_FIELDS = {"question", "answer", "prompt", "response", "judge"}
QUESTION = re.compile(r"^(?:What|Who) is the (?P<attribute>.+) of the (?P<entity>.+)\?$")


def passage_of(prompt: str) -> str:
    head, _, rest = prompt.partition("\n\n")
    assert head == PROMPT_HEADER
    passage, _, _ = rest.rpartition("\n\nQuestion: ")
    return passage


def planted_sentence(row: dict) -> str:
    """The fact sentence, rebuilt from the question and the answer."""
    match = QUESTION.match(row["question"])
    assert match, row["question"]
    return f"The {match['attribute']} of the {match['entity']} is {row['answer']}."


def test_rows_follow_the_fusang_long_schema():
    rows = make_longqa_rows(20, seed=3)
    for row in rows:
        assert FUSANG_FIELDS <= set(row)
        assert all(isinstance(row[f], str) and row[f] for f in FUSANG_FIELDS - {"judge"})
        assert row["judge"] in (0, 1)


@pytest.mark.parametrize("seed", [0, 7])
def test_the_answer_sits_in_the_prompt_at_the_planted_depth(seed):
    for row in make_longqa_rows(30, seed=seed, min_words=200, max_words=400, max_depth=0.5):
        passage = passage_of(row["prompt"])
        fact = planted_sentence(row)
        assert passage.count(fact) == 1
        before = passage[: passage.index(fact)]
        assert len(before.split()) / len(passage.split()) == pytest.approx(row["depth"])
        # Two 9-word distractors may be planted ahead of the fact: at most 18 of >= 200 words.
        assert row["depth"] <= 0.5 + 18 / 200
        assert row["prompt"].endswith(f"Question: {row['question']}")
        assert 200 <= len(passage.split()) <= 400 + 40  # the last filler sentence may overshoot


def test_demo_answers_lie_far_outside_a_128_token_window():
    tokenizer = AutoTokenizer.from_pretrained(TINY_QWEN3_DIR)
    for row in make_longqa_rows(20, seed=0):  # the demo's defaults
        fact = planted_sentence(row)
        after_fact = row["prompt"][row["prompt"].index(fact) + len(fact) :]
        assert len(tokenizer(after_fact)["input_ids"]) > 2 * 128


def test_judge_rows_answer_right_and_wrong_rows_answer_otherwise():
    rows = make_longqa_rows(200, seed=1, wrong_fraction=0.25)
    for row in rows:
        assert (row["response"] == planted_sentence(row)) == (row["judge"] == 1)
        assert (row["answer"] in row["response"]) == (row["judge"] == 1)
    wrong = sum(row["judge"] == 0 for row in rows)
    assert 25 <= wrong <= 75  # ~50 expected
    assert all(row["judge"] == 1 for row in make_longqa_rows(20, seed=1, wrong_fraction=0.0))
    assert all(row["judge"] == 0 for row in make_longqa_rows(20, seed=1, wrong_fraction=1.0))


def test_generator_is_deterministic_per_seed_and_split():
    assert make_longqa_rows(10, seed=5) == make_longqa_rows(10, seed=5)
    assert make_longqa_rows(10, seed=5) != make_longqa_rows(10, seed=6)
    assert make_longqa_rows(10, seed=5, split="train") != make_longqa_rows(10, seed=5, split="eval")


def test_train_and_eval_splits_ask_about_disjoint_entities():
    assert not set(split_entities("train")) & set(split_entities("eval"))

    def asked(split):
        return {QUESTION.match(row["question"])["entity"] for row in make_longqa_rows(100, seed=0, split=split)}

    assert asked("train") <= set(split_entities("train"))
    assert asked("eval") <= set(split_entities("eval"))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(min_words=0),
        dict(min_words=500, max_words=400),
        dict(min_depth=0.6, max_depth=0.5),
        dict(wrong_fraction=1.5),
        dict(split="test"),
    ],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        make_longqa_rows(1, **kwargs)


def test_parquet_round_trip(tmp_path):
    rows = make_longqa_rows(8, seed=2)
    path = write_parquet(tmp_path / "sub" / "longqa.parquet", rows)
    assert load_rows(path).to_list() == rows
