"""Rows -> input_ids + completion_mask (swaa_train/data.py), on the shipped demo tokenizer."""

from __future__ import annotations

import copy
import json
import logging
import re

import pytest
import torch
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from swaa_train.data import (
    GENERATION_MARKER,
    build_sft_dataset,
    detect_format,
    encode_multi_turn,
    encode_single_turn,
    load_rows,
)
from swaa_train.demo_assets import TINY_QWEN3_DIR, build_demo_assets
from swaa_train.synthetic import make_longqa_rows

END_OF_TURN = "<|im_end|>\n"
PAIRS = [
    ("What is the access code of the amber vault?", "The access code of the amber vault is 4821."),
    ("Who is the keeper of the quiet mill?\nAnswer briefly.", "Mira Okafor."),
    ("Say something with unicode: café, 東京 🙂", "  Voilà — 東京!  "),
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY_QWEN3_DIR)


@pytest.fixture
def plain_chatml(tokenizer):
    """The shipped tokenizer with its template stripped of {% generation %} markers."""
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", tokenizer.chat_template)
    assert not GENERATION_MARKER.search(plain.chat_template)
    return plain


def chatml(messages) -> str:
    """ChatML written out by hand, independent of the template."""
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages)


def supervised_text(tokenizer, sample) -> str:
    return tokenizer.decode([t for t, m in zip(sample["input_ids"], sample["completion_mask"]) if m])


def rows_in_format(fmt: str) -> list[dict]:
    if fmt == "fusang_long":
        return [dict(question=p, answer=r, prompt=p, response=r, judge=1) for p, r in PAIRS]
    if fmt == "messages":
        return [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]} for p, r in PAIRS]
    if fmt == "prompt_completion":
        return [{"prompt": p, "completion": r} for p, r in PAIRS]
    if fmt == "prompt_completion_conversational":
        return [
            {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": r}]}
            for p, r in PAIRS
        ]
    if fmt == "instruction_output":
        return [{"instruction": p, "input": "", "output": r} for p, r in PAIRS]
    raise AssertionError(fmt)


# ------------------------------------------------------------------------------------------
# The shipped demo model
# ------------------------------------------------------------------------------------------
def test_shipped_tokenizer_and_config_load_and_run(tokenizer):
    config = AutoConfig.from_pretrained(TINY_QWEN3_DIR)
    assert config.model_type == "qwen3"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (256, 4, 4)
    assert (config.num_key_value_heads, config.head_dim, config.intermediate_size) == (2, 64, 512)
    assert config.max_position_embeddings == 32768 and config.tie_word_embeddings
    assert config.vocab_size == len(tokenizer) == 2048
    assert [tokenizer.pad_token, tokenizer.eos_token] == ["<|endoftext|>", "<|im_end|>"]
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert (config.pad_token_id, config.eos_token_id) == (0, 2)
    text = "Byte-level: café 東京 🙂 4821\n"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    prompt = [{"role": "user", "content": PAIRS[0][0]}]
    rendered = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)
    ids = torch.tensor([rendered["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 2048) and torch.isfinite(logits).all()


def test_shipped_assets_are_small_weightless_and_rebuild_identically(tmp_path):
    shipped = {p.name: p for p in TINY_QWEN3_DIR.iterdir()}
    assert sum(p.stat().st_size for p in shipped.values()) < 300_000
    assert not [name for name in shipped if name.endswith((".safetensors", ".bin"))]
    rebuilt = build_demo_assets(tmp_path)
    assert sorted(p.name for p in rebuilt.iterdir()) == sorted(shipped)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (rebuilt / name).read_text() == shipped[name].read_text(), name
    config, shipped_config = (json.loads(p.read_text()) for p in (rebuilt / "config.json", shipped["config.json"]))
    config.pop("transformers_version"), shipped_config.pop("transformers_version")
    assert config == shipped_config


# ------------------------------------------------------------------------------------------
# Formats end to end
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt", ["fusang_long", "messages", "prompt_completion", "prompt_completion_conversational", "instruction_output"]
)
@pytest.mark.parametrize("system_prompt", [None, "You are a helpful assistant."])
def test_every_format_supervises_exactly_the_reply(tokenizer, fmt, system_prompt):
    dataset = build_sft_dataset(rows_in_format(fmt), tokenizer, system_prompt=system_prompt)
    assert dataset.column_names == ["input_ids", "completion_mask"]
    assert detect_format(Dataset.from_list(rows_in_format(fmt)).column_names) == fmt.removesuffix("_conversational")
    system = [("system", system_prompt)] if system_prompt else []
    for sample, (prompt, reply) in zip(dataset, PAIRS, strict=True):
        assert len(sample["input_ids"]) == len(sample["completion_mask"])
        assert tokenizer.decode(sample["input_ids"]) == chatml([*system, ("user", prompt), ("assistant", reply)])
        assert supervised_text(tokenizer, sample) == reply + END_OF_TURN
        # The supervised tokens are one block at the end: the reply.
        first = sample["completion_mask"].index(1)
        assert set(sample["completion_mask"][first:]) == {1} and set(sample["completion_mask"][:first]) == {0}
        assert tokenizer.decode(sample["input_ids"][:first]).endswith("<|im_start|>assistant\n")


def test_instruction_input_joins_the_user_message(tokenizer):
    rows = [{"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}]
    sample = build_sft_dataset(rows, tokenizer)[0]
    expected = chatml([("user", "Translate to French.\n\nGood morning"), ("assistant", "Bonjour")])
    assert tokenizer.decode(sample["input_ids"]) == expected


def test_multi_turn_messages_supervise_every_assistant_turn(tokenizer):
    turns = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Code?"), ("assistant", "4821")]
    rows = [{"messages": [{"role": role, "content": content} for role, content in turns]}]
    sample = build_sft_dataset(rows, tokenizer)[0]
    assert tokenizer.decode(sample["input_ids"]) == chatml(turns)
    assert supervised_text(tokenizer, sample) == "Hello." + END_OF_TURN + "4821" + END_OF_TURN


@pytest.mark.parametrize("prompt, reply", PAIRS)
def test_generation_mask_and_prompt_prefix_agree_on_single_turns(tokenizer, prompt, reply):
    user, assistant = [{"role": "user", "content": prompt}], [{"role": "assistant", "content": reply}]
    by_prefix = encode_single_turn(tokenizer, user, assistant, 0, "response")
    by_markers = encode_multi_turn(tokenizer, user + assistant, 0, has_generation_markers=True)
    assert by_prefix == by_markers


def test_samples_tokenize_like_the_tokenizer_on_the_rendered_text(tokenizer):
    sample = build_sft_dataset(rows_in_format("fusang_long")[:1], tokenizer)[0]
    text = chatml([("user", PAIRS[0][0]), ("assistant", PAIRS[0][1])])
    assert sample["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------
# Filters and their logs
# ------------------------------------------------------------------------------------------
def test_judge_filter_keeps_only_judge_1(tokenizer, caplog):
    rows = make_longqa_rows(30, seed=0, min_words=50, max_words=80, wrong_fraction=0.3)
    right = [row["response"] for row in rows if row["judge"] == 1]
    assert 0 < len(right) < len(rows)
    with caplog.at_level(logging.INFO, logger="swaa_train.data"):
        kept = build_sft_dataset(rows, tokenizer)
    assert [supervised_text(tokenizer, s) for s in kept] == [r + END_OF_TURN for r in right]
    assert f"kept {len(right)} of 30 rows" in caplog.text
    assert f"{30 - len(right)} with judge != 1" in caplog.text
    assert len(build_sft_dataset(rows, tokenizer, judge_filter=False)) == 30


def test_length_filter_drops_outside_the_range_and_logs_counts(tokenizer, caplog):
    rows = make_longqa_rows(20, seed=4, min_words=20, max_words=400, wrong_fraction=0.0)
    texts = [chatml([("user", row["prompt"]), ("assistant", row["response"])]) for row in rows]
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    low, high = sorted(lengths)[4], sorted(lengths)[-5]
    expected = [n for n in lengths if low <= n <= high]
    with caplog.at_level(logging.INFO, logger="swaa_train.data"):
        kept = build_sft_dataset(rows, tokenizer, min_length=low, max_length=high)
    assert [len(s["input_ids"]) for s in kept] == expected
    too_short, too_long = sum(n < low for n in lengths), sum(n > high for n in lengths)
    assert f"{too_short} shorter than min_length={low} tokens" in caplog.text
    assert f"{too_long} longer than max_length={high} tokens" in caplog.text
    assert f"dropped {too_short + too_long}" in caplog.text


def test_max_samples_takes_the_first_rows(tokenizer):
    rows = rows_in_format("prompt_completion")
    kept = build_sft_dataset(rows, tokenizer, max_samples=2)
    assert [supervised_text(tokenizer, s) for s in kept] == [r + END_OF_TURN for _, r in PAIRS[:2]]


def test_parallel_tokenization_gives_the_same_samples(tokenizer):
    rows = make_longqa_rows(8, seed=1, min_words=30, max_words=60)
    assert build_sft_dataset(rows, tokenizer, num_proc=2).to_list() == build_sft_dataset(rows, tokenizer).to_list()


# ------------------------------------------------------------------------------------------
# Bad input: every error names the row and the field
# ------------------------------------------------------------------------------------------
GOOD = {
    "fusang_long": {"question": "q", "answer": "a", "prompt": "Question?", "response": "Answer.", "judge": 1},
    "prompt_completion": {"prompt": "Question?", "completion": "Answer."},
    "instruction_output": {"instruction": "Do it.", "input": "", "output": "Done."},
    "messages": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
}
BAD_ROWS = [  # (format, how row 3 is broken, field the error must name)
    ("fusang_long", {"response": None}, "response"),
    ("fusang_long", {"response": "  \n "}, "response"),
    ("fusang_long", {"prompt": None}, "prompt"),
    ("fusang_long", {"prompt": ""}, "prompt"),
    ("prompt_completion", {"completion": ""}, "completion"),
    ("prompt_completion", {"prompt": None}, "prompt"),
    ("instruction_output", {"output": "\t"}, "output"),
    ("instruction_output", {"instruction": None}, "instruction"),
    (
        "messages",
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]},
        "messages[1].content",
    ),
    ("messages", {"messages": [{"role": "user", "content": "Hi"}]}, "messages"),
    ("messages", {"messages": []}, "messages"),
    ("messages", {"messages": [{"content": "Hi"}, {"role": "assistant", "content": "x"}]}, "messages[0]"),
]


def assert_row_3_named(tokenizer, fmt, broken, field, num_proc=None):
    rows = [dict(GOOD[fmt]) for _ in range(6)]
    rows[3].update(broken)
    with pytest.raises(ValueError, match=rf"row 3: field {re.escape(repr(field))}"):
        build_sft_dataset(rows, tokenizer, num_proc=num_proc)


@pytest.mark.parametrize("fmt, broken, field", BAD_ROWS)
def test_a_bad_row_is_named_with_its_field(tokenizer, fmt, broken, field):
    assert_row_3_named(tokenizer, fmt, broken, field)


def test_a_bad_row_in_a_worker_shard_keeps_its_index(tokenizer):
    assert_row_3_named(tokenizer, *BAD_ROWS[0], num_proc=2)  # row 3 opens the second of 2 shards


def test_a_judged_out_row_is_not_validated(tokenizer):
    rows = [GOOD["fusang_long"], {**GOOD["fusang_long"], "response": "", "judge": 0}]
    assert len(build_sft_dataset(rows, tokenizer)) == 1


def test_unknown_columns_list_what_was_found_and_what_is_accepted():
    with pytest.raises(ValueError, match=r"\['text', 'title'\].*fusang_long: prompt \+ response.*messages"):
        detect_format(["title", "text"])


def test_an_explicit_format_needs_its_columns(tokenizer):
    with pytest.raises(ValueError, match=r"'instruction_output' needs .*missing \['instruction', 'output'\]"):
        build_sft_dataset([GOOD["prompt_completion"]], tokenizer, format="instruction_output")


def test_multi_turn_messages_need_generation_markers(plain_chatml):
    turns = [("user", "Hi"), ("assistant", "Hello."), ("user", "Code?"), ("assistant", "4821")]
    rows = [{"messages": [{"role": role, "content": content} for role, content in turns]}]
    with pytest.raises(ValueError, match=r"row 0: field 'messages'.*\{% generation %\}"):
        build_sft_dataset(rows, plain_chatml)


@pytest.mark.parametrize("fmt", ["fusang_long", "messages"])
def test_single_turn_rows_need_no_generation_markers(tokenizer, plain_chatml, fmt):
    rows = rows_in_format(fmt)
    assert build_sft_dataset(rows, plain_chatml).to_list() == build_sft_dataset(rows, tokenizer).to_list()


def test_a_template_whose_generation_prompt_is_not_a_prefix_fails(plain_chatml):
    plain_chatml.chat_template = plain_chatml.chat_template.replace(
        "{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>model\\n' }}"
    )
    with pytest.raises(ValueError, match=r"row 0: field 'response'.*add_generation_prompt"):
        build_sft_dataset([GOOD["fusang_long"]], plain_chatml)


def test_a_tokenizer_without_chat_template_fails(plain_chatml):
    plain_chatml.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        build_sft_dataset([GOOD["fusang_long"]], plain_chatml)


# ------------------------------------------------------------------------------------------
# Loading rows from disk
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["parquet", "jsonl", "json", "csv"])
def test_load_rows_reads_local_files(tmp_path, suffix):
    rows = [GOOD["prompt_completion"], {"prompt": "P2", "completion": "C2"}]
    dataset = Dataset.from_list(rows)
    path = tmp_path / f"rows.{suffix}"
    {"parquet": dataset.to_parquet, "jsonl": dataset.to_json, "csv": dataset.to_csv}.get(
        suffix, lambda p: p.write_text(json.dumps(rows))
    )(path)
    assert load_rows(path).to_list() == rows
    assert load_rows(str(path), split="validation").to_list() == rows


def test_load_rows_reads_a_directory_by_split(tmp_path):
    Dataset.from_list([GOOD["prompt_completion"]]).to_parquet(tmp_path / "train.parquet")
    Dataset.from_list([{"prompt": "P", "completion": "test row"}]).to_parquet(tmp_path / "test.parquet")
    assert load_rows(tmp_path)["completion"] == ["Answer."]
    assert load_rows(tmp_path, split="test")["completion"] == ["test row"]


def test_load_rows_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_rows(tmp_path / "missing.parquet")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_rows(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="no data files"):
        load_rows(tmp_path)


# ------------------------------------------------------------------------------------------
# The contract with TRL
# ------------------------------------------------------------------------------------------
def test_sft_trainer_takes_the_dataset_and_masks_labels_outside_the_completion(tokenizer, tmp_path):
    from trl import SFTConfig, SFTTrainer

    dataset = build_sft_dataset(rows_in_format("fusang_long"), tokenizer)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_QWEN3_DIR))
    # TRL reads completion_mask only with completion_only_loss=True (its default None means False
    # for a dataset without prompt/completion columns); SWAATrainer sets it.
    args = SFTConfig(
        output_dir=str(tmp_path), report_to=[], max_steps=1, bf16=False, use_cpu=True, completion_only_loss=True
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    for sample, prepared in zip(dataset, trainer.train_dataset, strict=True):
        assert prepared["input_ids"] == sample["input_ids"]
        expected = [t if m else -100 for t, m in zip(sample["input_ids"], sample["completion_mask"])]
        assert prepared["labels"] == expected
