"""The adaptation experiment (experiments/adaptation/): its data generator, the prefill cost, and a toy
run of every stage on CPU."""

from __future__ import annotations

import json
import math
import re

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from experiments.adaptation.data import (
    LINK_ATTRIBUTE,
    RECALL_HEADER,
    copy_document,
    make_drill_texts,
    make_lm_texts,
    make_question_rows,
    write_repro_data,
)
from experiments.adaptation.prefill_cost import prefill_pairs, relative_prefill_cost, sliding_pairs
from swaa_attn import visible
from swaa_train.demo_assets import TINY_QWEN3_DIR
from swaa_train.swaa_config import SWAAConfig
from swaa_train.synthetic import split_entities

FACT = re.compile(r"The (?P<attribute>[a-z ]+?) of the (?P<entity>[a-z]+ [a-z]+) is (?P<value>[^.]+)\.")
QUESTION = re.compile(r"^(?:What|Who) is the (?P<attribute>[a-z ]+?) of the (?P<rest>.+)\?$")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY_QWEN3_DIR)


def facts_in(text: str) -> dict[tuple[str, str], list[str]]:
    """(entity, attribute) -> the values the text states for it."""
    found: dict[tuple[str, str], list[str]] = {}
    for m in FACT.finditer(text):
        found.setdefault((m["entity"], m["attribute"]), []).append(m["value"])
    return found


def solve(row: dict) -> str:
    """Answer a row's question by reading its passage only (one look-up per hop)."""
    passage = row["prompt"].rpartition("\n\nQuestion: ")[0]
    facts = facts_in(passage)
    q = QUESTION.match(row["question"])
    assert q, row["question"]
    entity = q["rest"]
    if entity.startswith(f"{LINK_ATTRIBUTE} of the "):  # two hops: follow the link first
        (linked,) = facts[(entity.removeprefix(f"{LINK_ATTRIBUTE} of the "), LINK_ATTRIBUTE)]
        entity = linked.removeprefix("the ")
    (value,) = facts[(entity, q["attribute"])]
    return value


# ------------------------------------------------------------------------------------------
# Generator
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_answer_is_derivable_from_the_prompt(split):
    rows = make_question_rows(40, seed=1, split=split, min_tokens=256, max_tokens=512)
    assert {row["hops"] for row in rows} == {1, 2}
    for row in rows:
        assert solve(row) == row["answer"]
        assert row["response"].endswith(f" is {row['answer']}.")
        assert row["judge"] == 1 and 0.0 <= row["depth"] <= 1.0


def test_two_hop_responses_spell_out_the_chain():
    for row in make_question_rows(20, seed=2, min_tokens=256, max_tokens=512, two_hop_fraction=1.0):
        link, value = [m.group(0) for m in FACT.finditer(row["response"])]
        assert f" {LINK_ATTRIBUTE} of the " in link and link in row["prompt"] and value in row["prompt"]


def test_splits_ask_about_disjoint_entities():
    def asked(split):
        rows = make_question_rows(60, seed=0, split=split, min_tokens=256, max_tokens=384)
        return {entity for row in rows for entity, _ in facts_in(row["response"])}

    train, eval_ = asked("train"), asked("eval")
    assert train <= set(split_entities("train")) and eval_ <= set(split_entities("eval"))
    assert not train & eval_


def test_prompt_lengths_stay_in_the_token_range(tokenizer):
    rows = make_question_rows(12, seed=3, min_tokens=2048, max_tokens=16384)
    lengths = [len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]) for row in rows]
    assert all(2048 <= n <= 16384 for n in lengths), lengths
    assert max(lengths) > 8192  # the range is used, not just its start


def test_rows_are_deterministic_in_split_and_seed():
    kwargs = dict(min_tokens=256, max_tokens=512)
    assert make_question_rows(5, seed=4, **kwargs) == make_question_rows(5, seed=4, **kwargs)
    assert make_question_rows(5, seed=4, **kwargs) != make_question_rows(5, seed=5, **kwargs)
    assert make_lm_texts(3, seed=4, max_tokens=512) == make_lm_texts(3, seed=4, max_tokens=512)


def test_lm_text_restates_its_facts():
    for doc in make_lm_texts(5, seed=0, min_tokens=256, max_tokens=512):
        passage, _, recall = doc["text"].partition(f"\n\n{RECALL_HEADER} ")
        assert facts_in(recall) == facts_in(passage) and facts_in(recall)


def test_drills_restate_their_facts_without_filler():
    for doc in make_drill_texts(5, seed=0, min_facts=3, max_facts=8):
        passage, _, recall = doc["text"].partition(f"\n\n{RECALL_HEADER} ")
        assert doc["text"][doc["recall_from"] :] == " " + recall
        assert facts_in(recall) == facts_in(passage) and 3 <= len(facts_in(passage)) <= 8
        assert not FACT.sub("", passage).strip()  # nothing but facts before the recall


def test_copy_document_repeats_a_random_sequence():
    import random

    rng, vocab = random.Random(0), list(range(5, 50))
    lengths = set()
    for _ in range(50):
        ids, mask = copy_document(rng, vocab, 3, 9)
        half = len(ids) // 2
        lengths.add(half)
        assert ids[:half] == ids[half:] and set(ids) <= set(vocab)
        assert mask == [0] * half + [1] * half
    assert lengths == set(range(3, 10))


def test_copy_rows_repeat_each_document_with_loss_on_the_second_copy(tokenizer):
    from experiments.adaptation.pretrain import CopyDocuments, packed_loss

    special = set(tokenizer.all_special_ids)
    batches = iter(CopyDocuments(tokenizer, tokens_per_step=300, seed=0, lengths=(4, 12)))
    for _ in range(3):
        batch = next(batches)
        assert int(batch["lengths"].sum()) == batch["input_ids"].numel() <= 300
        assert not batch["question"].any()
        for ids, answer in zip(
            batch["input_ids"].split(batch["lengths"].tolist()), batch["answer"].split(batch["lengths"].tolist())
        ):
            half = len(ids) // 2
            assert 4 <= half <= 12 and ids[:half].tolist() == ids[half:].tolist()
            assert answer.tolist() == [False] * half + [True] * half
            assert not special & set(ids.tolist())
    # With lm_weight 0 (copy steps), the loss is the second copies' loss alone.
    torch.manual_seed(0)
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
        )
    )
    model.config._attn_implementation = "sdpa"
    batch = {
        **batch,
        "lengths": batch["lengths"][:1],
        "input_ids": batch["input_ids"][: batch["lengths"][0]],
        "answer": batch["answer"][: batch["lengths"][0]],
        "question": batch["question"][:1],
    }
    loss, stats = packed_loss(model, batch, 0.0, torch.device("cpu"))
    half = int(batch["lengths"][0]) // 2
    logits = model(batch["input_ids"][None]).logits[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits[half - 1 :], batch["input_ids"][half:])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4) and stats["text_loss"] > 0


@pytest.mark.parametrize(
    "warmup,every,expected",
    [
        (2, 3, [True, True, False, False, True, False, False, True]),
        (0, 0, [False] * 8),
        (3, 0, [True] * 3 + [False] * 5),
    ],
)
def test_copy_step_schedule(warmup, every, expected):
    from experiments.adaptation.pretrain import PretrainArgs

    args = PretrainArgs(data_dir="d", out_dir="o", copy_warmup_steps=warmup, copy_every=every)
    assert [args.is_copy_step(step) for step in range(8)] == expected


def test_parallel_shards_match_a_single_process(tmp_path):
    counts = {"train": 3, "eval": 2}
    one = write_repro_data(tmp_path / "a", counts, min_tokens=256, max_tokens=384, workers=0)
    two = write_repro_data(tmp_path / "b", counts, min_tokens=256, max_tokens=384, workers=2)
    for name in counts:
        assert pq.read_table(one[name]).to_pylist() == pq.read_table(two[name]).to_pylist()


# ------------------------------------------------------------------------------------------
# Prefill cost
# ------------------------------------------------------------------------------------------
def brute_force_pairs(length: int, window: int | None, keep_first: int) -> int:
    positions = torch.arange(length)
    return int(visible(positions, positions, window=window, keep_first=keep_first, full_from=math.inf).sum())


@pytest.mark.parametrize("length", [1, 7, 64, 100, 301])
@pytest.mark.parametrize("window,keep_first", [(None, 0), (1, 0), (16, 0), (16, 4), (16, 40), (64, 8), (500, 3)])
def test_sliding_pairs_count_the_visible_mask(length, window, keep_first):
    assert sliding_pairs(length, window, keep_first) == brute_force_pairs(length, window, keep_first)


def test_relative_cost_mixes_full_and_sliding_layers():
    swaa = SWAAConfig(16, 4, True, [1])
    lengths = [50, 200]
    per_layer = [brute_force_pairs(n, 16, 4) for n in lengths]
    full = [brute_force_pairs(n, None, 0) for n in lengths]
    assert prefill_pairs(200, swaa, 3) == 2 * per_layer[1] + full[1]
    expected = (2 * sum(per_layer) + sum(full)) / (3 * sum(full))
    assert relative_prefill_cost(lengths, swaa, 3) == pytest.approx(expected)
    assert relative_prefill_cost(lengths, SWAAConfig(), 3) == 1.0
    # FA decode changes decoding, not the prefill.
    assert relative_prefill_cost(lengths, SWAAConfig(16, 4), 3) == relative_prefill_cost(
        lengths, SWAAConfig(16, 4, True), 3
    )


# ------------------------------------------------------------------------------------------
# Every stage, toy sizes
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_stages_end_to_end_on_cpu(tmp_path, monkeypatch):
    from experiments.adaptation.ladder import pack_base, run_adaptation, unpack_base, write_report
    from experiments.adaptation.pretrain import PretrainArgs, pretrain

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    counts = {"train": 6, "train_short": 6, "lm": 2, "lm_short": 2, "eval": 3, "drill": 4, "eval_short": 2}
    write_repro_data(data, counts, min_tokens=96, max_tokens=160, short_tokens=(64, 96), workers=0)
    summary = pretrain(
        PretrainArgs(
            data_dir=str(data),
            out_dir=str(tmp_path / "trained"),
            tokenizer=str(TINY_QWEN3_DIR),
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            num_kv_heads=1,
            intermediate_size=64,
            tokens_per_step=256,
            max_steps=4,
            warmup_steps=1,
            num_workers=0,
            short_fraction=0.5,
            device="cpu",
            copy_warmup_steps=1,
            copy_every=2,
            copy_min_length=8,
            copy_max_length=16,
            log_every=1,
        )
    )
    log = [json.loads(line) for line in (tmp_path / "trained" / "pretrain_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 4 and 0.0 <= log[0]["heldout_exact"] <= 1.0
    assert [r["copy"] for r in log] == [True, False, True, False]
    assert log[0]["question_exact"] == 0.0 and log[1]["phase"] == 0 and log[3]["phase"] == 1

    # Pretraining and adaptation as two device calls: the base travels as chunks.
    chunks = pack_base(tmp_path / "trained", tmp_path / "chunks", chunk_mib=0.25)
    assert len(chunks) >= 3 and all(c.stat().st_size <= 0.25 * 2**20 for c in chunks)
    with pytest.raises(ValueError, match="more than"):
        pack_base(tmp_path / "trained", tmp_path / "too_many", chunk_mib=0.25, max_chunks=len(chunks) - 2)
    unpack_base(tmp_path / "chunks", tmp_path / "base")
    trained = {
        p.relative_to(tmp_path / "trained"): p.read_bytes() for p in (tmp_path / "trained").rglob("*") if p.is_file()
    }
    assert {
        p.relative_to(tmp_path / "base"): p.read_bytes() for p in (tmp_path / "base").rglob("*") if p.is_file()
    } == trained
    assert {"model.safetensors", "config.json", "pretrain_log.jsonl"} <= {str(p) for p in trained}
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for chunk in chunks:
        (damaged / chunk.name).write_bytes(chunk.read_bytes())
    (damaged / chunks[1].name).write_bytes(chunks[1].read_bytes()[:-1])
    with pytest.raises(ValueError, match="damaged or incomplete"):
        unpack_base(damaged, tmp_path / "unused")

    recipe = "experiments/adaptation/lora.yaml"
    overrides = [
        f"model.name_or_path={tmp_path / 'base'}",
        "model.dtype=float32",
        "swaa.sliding_window_size=32",
        "swaa.keep_first=4",
        "swaa.non_sliding_layers=[1]",
        f"data.path={data / 'train.parquet'}",
        "data.max_samples=4",
        f"training.output_dir={tmp_path / 'adapter'}",
        "training.max_steps=1",
        "training.bf16=false",
        "training.use_cpu=true",
        "training.max_length=512",
    ]
    from pathlib import Path

    recipe = str(Path(__file__).resolve().parent.parent / recipe)
    run_adaptation(
        recipe,
        str(data / "eval.parquet"),
        str(tmp_path / "results"),
        overrides,
        lora_time_budget_s=60,
        max_new_tokens=2,
        batch_size=4,
        device="cpu",
    )
    assert (tmp_path / "adapter" / "swaa_config.json").is_file()
    report = write_report(
        str(tmp_path / "results"), str(data / "eval.parquet"), str(tmp_path / "base"), 2, tmp_path / "plot.png"
    )
    rows = report["rows"]
    assert [r["adapter"] for r in rows] == [False] * 5 + [True] * 5
    assert rows[0]["prefill_cost"] == 1.0 and all(r["prefill_cost"] < 1.0 for r in rows[1:5])
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert "| naive SWA | no |" in (tmp_path / "results" / "table.md").read_text()
