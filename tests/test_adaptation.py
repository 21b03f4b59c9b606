"""The adaptation experiment (experiments/adaptation/): its data generator, the prefill cost, and a toy
run of every stage on CPU."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

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
from experiments.adaptation.prefill_cost import kv_cache_saved, prefill_pairs, relative_prefill_cost, sliding_pairs
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
def tiny_pretrain_args(data: Path, out: Path, **override):
    """PretrainArgs of a 2-layer model (width 32, head dim 16 unless `override` says otherwise)."""
    from experiments.adaptation.pretrain import PretrainArgs

    fields = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, warmup_steps=1)
    fields = {**fields, "num_workers": 0, "eval_every": 0, **override}
    return PretrainArgs(data_dir=str(data), out_dir=str(out), tokenizer=str(TINY_QWEN3_DIR), **fields)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pretraining_one_seed_twice_gives_the_same_base_on_a_gpu(tmp_path):
    """Head dim 64, whose attention backward adds dQ with atomics unless deterministic algorithms
    are on (PretrainArgs.deterministic): two pretrainings of one seed, bit for bit the same."""
    from experiments.adaptation.pretrain import pretrain

    data = tmp_path / "data"
    counts = {"train": 40, "train_short": 40, "lm": 10, "lm_short": 10, "drill": 20, "eval_short": 8}
    write_repro_data(data, counts, min_tokens=1024, max_tokens=4096, short_tokens=(64, 256), workers=0)
    weights = []
    for run in ("a", "b"):
        pretrain(
            tiny_pretrain_args(
                data,
                tmp_path / run,
                hidden_size=128,
                intermediate_size=256,
                tokens_per_step=16384,
                max_steps=30,
                schedule="steps",  # the study's: the rate does not follow the clock
            )
        )
        weights.append((tmp_path / run / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]


def test_a_step_schedule_makes_the_base_independent_of_the_clock(tmp_path, monkeypatch):
    """Under schedule: steps the learning rate follows the step count alone: two runs of one seed on
    a fast and a slow clock give the same rates and the same weights. Under steps_or_time the slow
    clock moves the rate of the early steps (what kept the study's bases apart)."""
    import types

    import experiments.adaptation.pretrain as pretrain_module
    from experiments.adaptation.pretrain import pretrain

    data = tmp_path / "data"
    counts = {"train": 6, "train_short": 6, "lm": 2, "lm_short": 2, "drill": 4}
    write_repro_data(data, counts, min_tokens=96, max_tokens=160, short_tokens=(64, 96), workers=0)

    def run(name, schedule, seconds_per_call):
        clock = iter(range(0, 10**6, seconds_per_call))
        monkeypatch.setattr(pretrain_module, "time", types.SimpleNamespace(monotonic=lambda: float(next(clock))))
        args = tiny_pretrain_args(
            data, tmp_path / name, tokens_per_step=256, max_steps=6, time_budget_s=1000.0, schedule=schedule,
            device="cpu", copy_warmup_steps=0, copy_every=0, log_every=1, eval_every=0, deterministic=False,
        )  # fmt: skip
        pretrain(args)
        log = [json.loads(line) for line in (tmp_path / name / "pretrain_log.jsonl").read_text().splitlines()]
        return [e["lr"] for e in log], (tmp_path / name / "model.safetensors").read_bytes()

    fast, slow = run("fast", "steps", 1), run("slow", "steps", 30)
    assert len(fast[0]) == 6 and fast == slow
    assert run("clock", "steps_or_time", 30)[0] != slow[0]
    # A clock that runs out first: under steps no base cut short is saved, and the error says why.
    with pytest.raises(RuntimeError, match="stopped by time_budget_s .* at step [1-5] of max_steps 6"):
        run("short", "steps", 300)
    assert (tmp_path / "short" / "pretrain_log.jsonl").is_file() and not (tmp_path / "short" / "config.json").exists()
    with pytest.raises(ValueError, match="schedule must be"):
        tiny_pretrain_args(data, tmp_path / "bad", schedule="time")


@pytest.mark.slow
def test_stages_end_to_end_on_cpu(tmp_path, monkeypatch):
    import experiments.adaptation.pretrain as pretrain_module
    from experiments.adaptation.ladder import pack_base, run_adaptation, unpack_base, write_report
    from experiments.adaptation.pretrain import pretrain

    monkeypatch.chdir(tmp_path)
    seen_deterministic, packed_loss = [], pretrain_module.packed_loss

    def watched_loss(model, *args):
        if model.training:
            seen_deterministic.append(torch.are_deterministic_algorithms_enabled())
        return packed_loss(model, *args)

    monkeypatch.setattr(pretrain_module, "packed_loss", watched_loss)
    data = tmp_path / "data"
    counts = {"train": 6, "train_short": 6, "lm": 2, "lm_short": 2, "eval": 3, "drill": 4, "eval_short": 2}
    write_repro_data(data, counts, min_tokens=96, max_tokens=160, short_tokens=(64, 96), workers=0)
    summary = pretrain(
        tiny_pretrain_args(
            data,
            tmp_path / "trained",
            tokens_per_step=256,
            max_steps=4,
            device="cpu",
            copy_warmup_steps=1,
            copy_every=2,
            copy_min_length=8,
            copy_max_length=16,
            log_every=1,
            eval_every=100,
        )
    )
    log = [json.loads(line) for line in (tmp_path / "trained" / "pretrain_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 4 and 0.0 <= log[0]["heldout_exact"] <= 1.0
    assert seen_deterministic == [True] * 4 and not torch.are_deterministic_algorithms_enabled()  # on, then restored
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


# ------------------------------------------------------------------------------------------
# The held-out binned set (issue 14)
# ------------------------------------------------------------------------------------------
def passage_depth(prompt: str, sentence: str) -> float:
    """Share of the passage's words before `sentence`, read from the prompt text."""
    passage = prompt.partition("\n\n")[2].rpartition("\n\nQuestion: ")[0]
    before = passage[: passage.index(sentence)]
    return len(before.split()) / len(passage.split())


def test_eval_set_bins_hold_in_the_text(tokenizer):
    from experiments.adaptation.data import DEPTH_BINS, LENGTH_BINS, TRAIN_RANGE, make_eval_set

    rows = make_eval_set(2, seed=8, workers=0)
    cells = [(lb, db) for lb in LENGTH_BINS for db in DEPTH_BINS]
    assert [(r["length_bin"], r["depth_bin"]) for r in rows] == [c for c in cells for _ in range(2)]
    assert [r["hops"] for r in rows] == [1, 2] * len(cells)
    for row in rows:
        low, high = LENGTH_BINS[row["length_bin"]]
        tokens = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
        assert low <= tokens < high, (row["length_bin"], tokens)
        shallow, deep = DEPTH_BINS[row["depth_bin"]]
        chain = [m.group(0) for m in FACT.finditer(row["response"])]
        assert len(chain) == row["hops"]
        for sentence in chain:
            assert shallow <= passage_depth(row["prompt"], sentence) <= deep, (row["depth_bin"], sentence)
        assert row["in_range"] == (TRAIN_RANGE[0] <= tokens <= TRAIN_RANGE[1])
        assert solve(row) == row["answer"]


def test_another_question_set_has_the_same_bins_and_other_questions(tmp_path):
    """StudyConfig.eval_set: set 0 is where it always was, set 1 is other questions of the same
    bins, written beside it; rows record their set, and two sets pool only as separate runs."""
    from experiments.adaptation.report import _question_sets
    from experiments.adaptation.study import StudyConfig, ensure_data, read_results

    bins = dict(length_bins={"a": [512, 768], "b": [768, 1024]}, depth_bins={"x": [0.0, 0.05], "y": [0.8, 1.0]})
    sets = []
    for eval_set in (0, 1):
        study = StudyConfig(out_dir=str(tmp_path / "study"), eval_questions=8, train_range=[512, 768], num_proc=0,
                            eval_set=eval_set, **bins)  # fmt: skip
        path = ensure_data(study, ["eval_bins"])["eval_bins"]
        assert path == study.eval_path and path.is_file()
        sets.append(pq.read_table(path).to_pylist())
    assert study.eval_path == tmp_path / "study" / "data" / "eval_set1" / "eval_bins.parquet"
    assert (tmp_path / "study" / "data" / "eval_bins.parquet").is_file()
    cells = lambda rows: sorted((r["length_bin"], r["depth_bin"], r["in_range"]) for r in rows)  # noqa: E731
    assert cells(sets[0]) == cells(sets[1]) and len(sets[1]) == 8
    assert not {r["prompt"] for r in sets[0]} & {r["prompt"] for r in sets[1]}
    with pytest.raises(ValueError, match="eval_set must be >= 0"):
        StudyConfig(eval_set=-1)
    rows = synthetic_rows({("none", "full attention"): (FULL, None, {0: (1.0, 0.0)})}, questions=4)
    for name, eval_set in (("a", 0), ("b", 1)):
        path = tmp_path / name / "seed0" / "rows" / f"rows-s0-{name}.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps({**r, "eval_set": eval_set}) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"question sets \[0, 1\].*--separate-runs"):
        read_results([tmp_path / "a", tmp_path / "b"])
    pooled, _ = read_results([tmp_path / "a", tmp_path / "b"], separate_runs=True)
    assert _question_sets(pooled) == " (question sets 0, 1)" and _question_sets(rows) == ""


def test_eval_set_is_the_same_in_parallel_and_over_eval_entities():
    from experiments.adaptation.data import make_eval_set

    bins = dict(length_bins={"a": (512, 768), "b": (768, 1024)}, train_range=(512, 768))
    one = make_eval_set(2, seed=3, workers=0, **bins)
    assert one == make_eval_set(2, seed=3, workers=2, **bins)
    assert one != make_eval_set(2, seed=4, workers=0, **bins)
    assert [r["in_range"] for r in one] == [True] * 6 + [False] * 6
    asked = {entity for row in one for entity, _ in facts_in(row["response"])}
    assert asked <= set(split_entities("eval"))


def test_the_study_asks_for_300_questions_inside_and_beyond_the_training_range():
    from experiments.adaptation.study import StudyConfig

    study = StudyConfig.load(Path(__file__).resolve().parent.parent / "experiments/adaptation/study.yaml")
    low, high = study.train_range
    inside = [b for b, (lo, hi) in study.length_bins.items() if low <= lo and hi <= high]
    beyond = [b for b, (lo, hi) in study.length_bins.items() if lo >= high]
    assert study.eval_questions >= 300 and len(study.seeds) >= 3
    assert len(inside) >= 2 and len(beyond) >= 1
    assert study.depth_bins["first 5%"] == [0.0, 0.05] and study.depth_bins["last 20%"] == [0.8, 1.0]
    # The YAML spells out the default arms exactly.
    assert study.arms == StudyConfig(arms=[]).arms
    with pytest.raises(ValueError, match="multiple of 12"):
        StudyConfig(eval_questions=301)
    with pytest.raises(ValueError, match="unknown key"):
        StudyConfig.from_dict({"seed": [0]})


def test_write_repro_data_refuses_a_count_that_does_not_fill_the_cells(tmp_path):
    with pytest.raises(ValueError, match="multiple of the 12"):
        write_repro_data(tmp_path, {"eval_bins": 13})


# ------------------------------------------------------------------------------------------
# KV cache saved
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "swaa",
    [SWAAConfig(8, 2), SWAAConfig(8, 2, False, [1]), SWAAConfig(8, 2, True), SWAAConfig(8, 2, [0]), SWAAConfig()],
)
def test_kv_cache_saved_matches_the_caches_memory_report(swaa):
    from conftest import tiny_model

    from swaa_train.inference import generate_ids, set_swaa

    model = tiny_model("qwen3")
    set_swaa(model, swaa)
    prompt, steps = 30, 5
    ids = torch.randint(3, 90, (1, prompt))
    memory = generate_ids(model, ids, max_new_tokens=steps, eos_token_id=None, pad_token_id=0).memory
    cached = prompt + steps - 1  # the last token is sampled, never fed back
    expected = memory["saved_bytes"] / memory["full_cache_bytes"]
    assert kv_cache_saved([cached], swaa, 3) == pytest.approx(expected)


def test_kv_cache_saved_weights_prompts_by_length():
    swaa = SWAAConfig(10, 2, False, [0])  # 2 of 3 layers keep 11 positions
    assert kv_cache_saved([5], swaa, 3) == 0.0
    assert kv_cache_saved([111], swaa, 3) == pytest.approx(2 * 100 / (3 * 111))
    assert kv_cache_saved([5, 111], swaa, 3) == pytest.approx(2 * 100 / (3 * 116))


# ------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------
def test_t_quantile_matches_closed_forms():
    from statistics import NormalDist

    from experiments.adaptation.stats import t_quantile

    p = 0.975
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert t_quantile(p, 100000) == pytest.approx(NormalDist().inv_cdf(p), rel=1e-4)
    assert t_quantile(1 - p, 4) == pytest.approx(-t_quantile(p, 4))


def test_t_interval_by_hand():
    from experiments.adaptation.stats import t_interval

    mean, low, high = t_interval([0.6, 0.7, 0.8])
    half = 4.302652729749464 * 0.1 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert (mean, low, high) == pytest.approx((0.7, 0.7 - half, 0.7 + half))
    assert t_interval([0.5]) == (0.5, None, None)


def test_bootstrap_interval():
    import numpy as np

    from experiments.adaptation.stats import bootstrap_interval

    assert bootstrap_interval(np.ones((3, 40))) == (1.0, 1.0)
    # Two resamples given by hand: questions (0, 0, 1) and (2, 2, 2) of two seeds.
    correct = np.array([[1, 0, 1], [1, 1, 0]])
    indices = np.array([[0, 0, 1], [2, 2, 2]])
    low, high = bootstrap_interval(correct, level=0.0, indices=indices)  # both quantiles at the median
    assert low == high == pytest.approx((5 / 6 + 3 / 6) / 2)
    ratio = bootstrap_interval(correct, np.ones((2, 3)), level=0.0, indices=indices)
    assert ratio[0] == pytest.approx((5 / 6 + 3 / 6) / 2)
    # Many questions: the bootstrap interval is close to the normal approximation of a proportion.
    rng = np.random.default_rng(0)
    sample = (rng.random((1, 2000)) < 0.3).astype(float)
    p = sample.mean()
    half = 1.959964 * math.sqrt(p * (1 - p) / 2000)
    low, high = bootstrap_interval(sample, resamples=4000)
    assert low == pytest.approx(p - half, abs=0.004) and high == pytest.approx(p + half, abs=0.004)


def synthetic_rows(accuracy: dict, questions: int = 40, lengths=(3000, 20000)) -> list[dict]:
    """Rows where (lora, setting) answers the first round(acc * n) in-range and beyond-range questions
    of each seed right; accuracy[(lora, setting)] = (swaa, lora_setting, {seed: (in-range acc, beyond acc)})."""
    rows = []
    half = questions // 2
    for (lora, setting), (swaa, lora_setting, by_seed) in accuracy.items():
        for seed, (inside, beyond) in by_seed.items():
            for index in range(questions):
                in_range = index < half
                k = index if in_range else index - half
                rows.append(
                    {
                        "seed": seed,
                        "lora": lora,
                        "lora_setting": lora_setting,
                        "setting": setting,
                        "swaa": swaa.to_dict(),
                        "num_layers": 8,
                        "group": "kv",
                        "factor": "",
                        "level": "",
                        "lora_steps": 0 if lora == "none" else 200,
                        "index": index,
                        "length_bin": "in" if in_range else "beyond",
                        "depth_bin": ["first 5%", "middle"][index % 2],
                        "in_range": in_range,
                        "hops": 1,
                        "prompt_tokens": lengths[0] if in_range else lengths[1],
                        "correct": k < round((inside if in_range else beyond) * half),
                    }
                )
    return rows


FULL, NAIVE, FA = SWAAConfig(), SWAAConfig(512), SWAAConfig(512, 32, True)
NO_FA = SWAAConfig(512, 32, False, [1, 5])


def test_summary_by_seed_subset_and_relative_to_full():
    from experiments.adaptation.stats import find, summarize

    rows = synthetic_rows(
        {
            ("none", "full attention"): (FULL, None, {0: (0.9, 0.5), 1: (0.8, 0.4), 2: (1.0, 0.6)}),
            ("none", "SWA 512"): (NAIVE, None, {0: (0.45, 0.0), 1: (0.4, 0.0), 2: (0.5, 0.0)}),
        }
    )
    summary = summarize(rows, resamples=200)
    full = find(summary, "none", "full attention", "in range")
    assert full["per_seed"] == pytest.approx([0.9, 0.8, 1.0]) and full["mean"] == pytest.approx(0.9)
    # t(0.975, 2) x sd / sqrt(3) below the mean; above it the interval is cut at 100%.
    assert full["t_interval"] == pytest.approx([0.9 - 4.302652729749464 * 0.1 / math.sqrt(3), 1.0])
    assert find(summary, "none", "full attention")["mean"] == pytest.approx((0.9 + 0.8 + 1.0 + 0.5 + 0.4 + 0.6) / 6)
    naive = find(summary, "none", "SWA 512", "in range")
    assert naive["relative"] == pytest.approx(0.5) and naive["relative_t_interval"] == pytest.approx([0.5, 0.5])
    assert find(summary, "none", "SWA 512", "beyond range")["relative"] == 0.0
    assert find(summary, "none", "SWA 512", "first 5%")["questions"] == 20
    assert naive["kv_cache_saved"] == pytest.approx(1 - 511 / 3000)
    assert naive["prefill_cost"] == pytest.approx(relative_prefill_cost([3000] * 20, NAIVE, 8))


@pytest.mark.parametrize(
    "full,naive,fa_lora,kv_lora,expected",
    [
        ((0.9, 0.85, 0.95), 0.05, (0.9, 0.85, 0.95), 0.5, [True, True, True, True]),
        ((0.8, 0.85, 0.75), 0.05, (0.8, 0.85, 0.75), 0.5, [False, True, True, True]),
        ((0.9, 0.85, 0.95), 0.15, (0.85, 0.80, 0.90), 0.4, [True, False, False, False]),
        ((0.9, 0.85, 0.95), 0.0, (0.9, 0.725, 0.95), 0.5, [True, True, False, True]),  # mean 95.1%, t low 75%
        # A base that answers ~nothing is no baseline: 1 of 40 right makes any share noise.
        ((0.05, 0.025, 0.05), 1.0, (0.05, 0.025, 0.05), 1.0, [False, None, None, None]),
    ],
)
def test_targets_from_a_results_file(tmp_path, full, naive, fa_lora, kv_lora, expected):
    from experiments.adaptation.stats import evaluate_targets, summarize
    from experiments.adaptation.study import read_rows

    seeds = range(3)
    rel = lambda acc: {s: (acc[s] if isinstance(acc, tuple) else acc * full[s], 0.0) for s in seeds}
    rows = synthetic_rows(
        {
            ("none", "full attention"): (FULL, None, rel(full)),
            ("none", "SWA 512"): (NAIVE, None, rel(naive)),
            ("fa", "SWA 512 + sinks 32 + FA decode"): (FA, "x", rel(fa_lora)),
            ("nofa", "no FA"): (NO_FA, "no FA", rel(kv_lora)),
            ("fa", "SWA 512"): (NAIVE, "x", rel(0.9)),  # saves KV, but its LoRA was trained under another setting
        },
        questions=80,
    )
    path = tmp_path / "rows-s0-x.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    targets = evaluate_targets(summarize(read_rows([tmp_path]), resamples=300), "fa", FA_NAME, "SWA 512")
    assert [t["met"] for t in targets] == expected
    assert "no FA + LoRA nofa" in targets[3]["evidence"] and "SWA 512 + LoRA fa" not in targets[3]["evidence"]
    if expected[1] is None:
        assert all(t["evidence"].startswith("not decided: full attention answers 4.2%") for t in targets[1:])


FA_NAME = "SWA 512 + sinks 32 + FA decode"


def test_targets_not_decided_on_rows_of_fewer_seeds(tmp_path):
    """A half-run study (a LoRA on one seed of three) gives numbers, not a verdict."""
    from experiments.adaptation.stats import evaluate_targets, summarize

    three = {s: (0.9, 0.0) for s in range(3)}
    rows = synthetic_rows(
        {
            ("none", "full attention"): (FULL, None, three),
            ("none", "SWA 512"): (NAIVE, None, {s: (0.0, 0.0) for s in range(3)}),
            ("fa", FA_NAME): (FA, "x", {0: (0.9, 0.0)}),  # only seed 0 trained its LoRA
            ("nofa", "no FA"): (NO_FA, "no FA", {0: (0.9, 0.0), 1: (0.0, 0.0)}),
        },
        questions=40,
    )
    summary = summarize(rows, resamples=100)
    targets = evaluate_targets(summary, "fa", FA_NAME, "SWA 512", min_seeds=3)
    assert [t["met"] for t in targets] == [True, True, None, None]
    assert targets[2]["evidence"].startswith("not decided: 1 of 3 seeds")
    assert targets[3]["evidence"].startswith("not decided: 2 of 3 seeds")
    # The same rows without the rule: the one seed's LoRA would decide.
    assert evaluate_targets(summary, "fa", FA_NAME, "SWA 512")[2]["met"] is True


def test_compare_pairs_seeds_and_questions():
    import numpy as np

    from experiments.adaptation.stats import bootstrap_difference, compare

    rows = synthetic_rows(
        {
            ("a", "SWA 512"): (NAIVE, "SWA 512", {0: (0.6, 0.0), 1: (0.5, 0.0), 2: (0.7, 0.0)}),
            ("b", "SWA 512"): (NAIVE, "SWA 512", {0: (0.5, 0.0), 1: (0.5, 0.0), 2: (0.5, 0.0)}),
        }
    )
    diff = compare(rows, ("a", "SWA 512"), ("b", "SWA 512"), resamples=200)
    half = 4.302652729749464 * 0.1 / math.sqrt(3)  # per-seed differences 0.1, 0.0, 0.2
    assert diff["per_seed"] == pytest.approx([0.1, 0.0, 0.2]) and diff["questions"] == 20
    assert diff["t_interval"] == pytest.approx([0.1 - half, 0.1 + half])
    assert compare(rows, ("a", "SWA 512"), ("missing", "x")) is None
    # By hand: column sums (2, 1, 1) and (1, 0, 1); draws (0, 0, 1) -> (5 - 2) / 6, (2, 2, 2) -> 0.
    first, second = np.array([[1, 0, 1], [1, 1, 0]]), np.array([[0, 0, 1], [1, 0, 0]])
    low, high = bootstrap_difference(first, second, level=0.0, indices=np.array([[0, 0, 1], [2, 2, 2]]))
    assert low == high == pytest.approx(0.25)


def test_every_fa_decode_lora_gets_a_target_row_of_its_own(tmp_path):
    """A second FA-decode LoRA (another learning rate) is judged on its own row, after the four;
    the ladder's verdict does not change, and a LoRA with no rows adds nothing."""
    from experiments.adaptation.stats import evaluate_targets, summarize

    seeds = range(3)
    rows = synthetic_rows(
        {
            ("none", "full attention"): (FULL, None, {s: (0.9, 0.9) for s in seeds}),
            ("none", "SWA 512"): (NAIVE, None, {s: (0.0, 0.0) for s in seeds}),
            ("fa", FA_NAME): (FA, "x", {s: (0.7, 0.7) for s in seeds}),  # 78% of full
            ("fa_low_lr", FA_NAME): (FA, "x", {s: (0.9, 0.9) for s in seeds}),  # 100% of full
        },
        questions=80,
    )
    summary = summarize(rows, resamples=300)
    targets = evaluate_targets(summary, "fa", FA_NAME, "SWA 512", other_fa_decode_loras=("fa_low_lr", "absent"))
    assert [t["met"] for t in targets] == [True, True, False, None, True]
    assert targets[4]["target"].endswith("(LoRA fa_low_lr)") and "LoRA fa_low_lr: 100.0%" in targets[4]["evidence"]
    assert evaluate_targets(summary, "fa", FA_NAME, "SWA 512")[:4] == targets[:4]


def test_an_fa_decode_arm_is_also_evaluated_on_the_ladders_fa_decode_rung_and_full_attention():
    from experiments.adaptation.study import StudyConfig

    study = StudyConfig()
    arm = next(a for a in study.arms if a.name == "fa_decode_lr1e-4")
    assert arm in study.fa_decode_arms and study.ladder_arm not in study.fa_decode_arms
    assert study.arm_settings(arm, 8) == [arm.swaa, SWAAConfig(512, 32, True), SWAAConfig()]
    no_fa = next(a for a in study.arms if a.name == "no_fa")
    assert study.arm_settings(no_fa, 8) == [no_fa.swaa, SWAAConfig(512, 32, True, [1, 5])]


def test_targets_not_run_without_rows():
    from experiments.adaptation.stats import evaluate_targets

    assert [t["met"] for t in evaluate_targets([], "fa", FA_NAME, "SWA 512")] == [None] * 4


# ------------------------------------------------------------------------------------------
# The study driver
# ------------------------------------------------------------------------------------------
def test_setting_names_spell_the_setting_out():
    from experiments.adaptation.study import setting_name

    assert setting_name(SWAAConfig()) == "full attention"
    assert setting_name(SWAAConfig(512)) == "SWA 512"
    assert setting_name(SWAAConfig(512, 32, True, [1, 5])) == "SWA 512 + sinks 32 + FA decode + full layers 1,5"
    assert setting_name(SWAAConfig(512, 0, [2])) == "SWA 512 + FA decode in layers 2"


def test_plan_runs_every_task_once_in_jobs_within_budget():
    from experiments.adaptation.study import StudyConfig, estimate_s, plan_jobs

    study = StudyConfig()
    jobs = plan_jobs(study)
    for seed in study.seeds:
        mine = [j for j in jobs if j.seed == seed]
        assert [t for j in mine for t in j.tasks] == study.tasks()
        assert mine[0].tasks[0] == "pretrain" and [j.name for j in mine] == [f"s{seed}-{k}" for k in range(len(mine))]
    for job in jobs:
        total = study.estimates.job_start_s + sum(estimate_s(study, t) for t in job.tasks)
        assert job.estimate_s == pytest.approx(total) and (total <= study.job_budget_s or len(job.tasks) == 1)
    assert max(j.estimate_s for j in jobs) < 600


def test_pretraining_estimate_counts_steps_up_to_the_time_budget():
    from experiments.adaptation.study import StudyConfig, estimate_s

    est = StudyConfig().estimates
    fixed = est.pretrain_data_s + est.pretrain_extra_s
    by_steps = StudyConfig(pretrain={"max_steps": 2500, "time_budget_s": 1200.0})
    assert estimate_s(by_steps, "pretrain") == pytest.approx(fixed + 2500 * est.pretrain_step_s)
    by_clock = StudyConfig(pretrain={"max_steps": 2500, "time_budget_s": 100.0})
    assert estimate_s(by_clock, "pretrain") == pytest.approx(fixed + 100.0)


def test_mix_alternates_the_two_sets(tmp_path):
    from experiments.adaptation.study import write_mix
    from swaa_train.synthetic import write_parquet

    a = write_parquet(tmp_path / "a.parquet", [{"x": i} for i in range(3)])
    b = write_parquet(tmp_path / "b.parquet", [{"x": 10 + i} for i in range(5)])
    mixed = write_mix(a, b, tmp_path / "m.parquet")
    assert [r["x"] for r in pq.read_table(mixed).to_pylist()] == [0, 10, 1, 11, 2, 12, 13, 14]


def toy_study(out_dir):
    from experiments.adaptation.study import Arm, StudyConfig

    recipe = Path(__file__).resolve().parent.parent / "experiments/adaptation/lora.yaml"
    return StudyConfig(
        out_dir=str(out_dir),
        recipe=str(recipe),
        seeds=[0, 1],
        eval_questions=6,
        length_bins={"short": [320, 384], "long": [384, 448]},
        train_range=[320, 384],
        data_counts={"train": 4, "train_short": 4, "lm": 2, "lm_short": 2, "drill": 4, "eval_short": 2},
        short_tokens=[64, 96],
        pretrain=dict(
            tokenizer=str(TINY_QWEN3_DIR),
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            num_kv_heads=1,
            intermediate_size=64,
            tokens_per_step=512,
            max_steps=2,
            warmup_steps=1,
            num_workers=0,
            copy_warmup_steps=1,
            eval_every=0,
        ),
        window=32,
        sinks=4,
        full_layers=[1],
        lora_steps=1,
        lora_overrides=[
            "model.dtype=float32",
            "data.max_samples=2",
            "training.bf16=false",
            "training.use_cpu=true",
            "training.max_length=1024",
            "training.logging_steps=1",
        ],
        arms=[
            Arm("fa", SWAAConfig(32, 4, True, [1]), group="ladder", eval_ladder=True),
            Arm("nofa_mix", SWAAConfig(32, 4, False, []), group="kv", factor="data", level="mix", data="mix"),
            Arm("probed", SWAAConfig(32, 4, False), group="sweep", factor="full layers", level="probed", probed=True),
        ],
        sweep_reference="nofa_mix",
        max_new_tokens=2,
        batch_size=8,
        dtype="float32",
        device="cpu",
        num_proc=0,
        job_budget_s=200.0,
    )


@pytest.mark.slow
def test_study_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    from experiments.adaptation.report import write_study_report
    from experiments.adaptation.study import collect_job, plan_jobs, read_results, read_rows, run_job, setting_name

    monkeypatch.chdir(tmp_path)
    study = toy_study(tmp_path / "study")
    jobs = plan_jobs(study)
    assert len(jobs) > len(study.seeds)  # the budget splits each seed's tasks
    for job in jobs:
        run_job(study, job)
    rows = read_rows([study.out_dir])
    eval_rows = pq.read_table(study.data_dir / "eval_bins.parquet").to_pylist()
    ladder = [setting_name(s) for s in study.ladder(2)]
    expected = {("none", n) for n in ladder} | {("fa", n) for n in ladder}
    # The KV-saving arm's setting is evaluated without LoRA, with its LoRA, and with its LoRA + FA decode.
    expected |= {("none", "SWA 32 + sinks 4"), ("nofa_mix", "SWA 32 + sinks 4")}
    expected |= {("nofa_mix", "SWA 32 + sinks 4 + FA decode")}
    # base_probe: the layer the probe chose on training rows, one name for every seed; the probed
    # arm's LoRA, trained under that layer, under the same name (and with FA decode added).
    expected |= {("none", "SWA 32 + sinks 4 + 1 probed full layers")}
    expected |= {("probed", "SWA 32 + sinks 4 + 1 probed full layers")}
    expected |= {("probed", "SWA 32 + sinks 4 + FA decode + 1 probed full layers")}
    assert {(r["lora"], r["setting"]) for r in rows} == expected
    for seed in study.seeds:
        probe = json.loads((study.seed_dir(seed) / "probe.json").read_text())
        first = {int(k): v for k, v in probe["rounds"][0].items()}
        assert probe["chosen"] == [min(first, key=first.get)] and set(first) == {0, 1}
        probed = [r for r in rows if r["seed"] == seed and "probed" in r["setting"]]
        assert {tuple(r["swaa"]["non_sliding_layers"]) for r in probed} == {tuple(probe["chosen"])}
        assert all(r["probe_layers"] == probe["chosen"] for r in probed)
        assert all(not r["swaa"]["force_fa_decode"] for r in probed if r["lora"] == "none")
    assert len(rows) == len(study.seeds) * len(expected) * len(eval_rows)
    for row in rows:
        question = eval_rows[row["index"]]
        assert (row["length_bin"], row["depth_bin"], row["in_range"]) == (
            question["length_bin"],
            question["depth_bin"],
            question["in_range"],
        )
        assert row["lora_steps"] == (0 if row["lora"] == "none" else 1)
        low, high = study.length_bins[row["length_bin"]]
        assert low < row["prompt_tokens"] < high + 32  # the bin's prompt, plus the chat template's few tokens
    # Each LoRA was trained under its own setting, with the seed as its seed.
    for arm in study.arms:
        for seed in study.seeds:
            saved = json.loads((study.seed_dir(seed) / "adapters" / arm.name / "swaa_config.json").read_text())
            chosen = json.loads(study.probe_path(seed).read_text())["chosen"]
            layers = chosen if arm.probed else arm.swaa.non_sliding_layers
            assert SWAAConfig.from_dict(saved) == SWAAConfig(**{**arm.swaa.to_dict(), "non_sliding_layers": layers})
    # A second run of a job finds its tasks done and redoes nothing.
    timings = (study.seed_dir(0) / "timings.jsonl").read_text()
    run_job(study, jobs[0])
    assert (study.seed_dir(0) / "timings.jsonl").read_text() == timings
    copied = collect_job(study, jobs[0], tmp_path / "out")
    assert (tmp_path / "out" / "seed0" / "chunks" / "base.tar.json") in copied
    assert (tmp_path / "out" / "seed0" / "rows" / "rows-s0-pretrain.jsonl") in copied

    # Each LoRA's training log, beside the pretraining log: the report's per-seed tables read them.
    assert read_results([study.out_dir])[0] == rows
    logs = read_results([study.out_dir])[1]
    assert set(logs) == {(s, n) for s in study.seeds for n in ["pretrain_log", *(a.name for a in study.arms)]}
    assert all(any("loss" in e for e in logs[(s, a.name)]) for s in study.seeds for a in study.arms)

    result = write_study_report(study, rows, tmp_path / "report", resamples=100, logs=logs)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "2 seeds (0, 1) x 6 questions" in report and "| full attention | none |" in report
    for seed in study.seeds:
        assert f"| {seed} | {logs[(seed, 'pretrain_log')][-1]['step']} | " in report  # its last logged step
        loss = next(e["loss"] for e in logs[(seed, "fa")] if "loss" in e)  # one step: start = end
        assert f"| fa | {seed} | {loss:.4g} | {loss:.4g} | " in report
    full = [r["correct"] for r in rows if (r["lora"], r["setting"]) == ("none", "full attention") and r["in_range"]]
    assert result["targets"][0]["met"] == (sum(full) / len(full) >= 0.85)
    assert f"full attention: {100 * sum(full) / len(full):.1f}% (t [" in result["targets"][0]["evidence"]
    assert "SWA 32 + sinks 4 + LoRA nofa_mix (KV saved" in result["targets"][3]["evidence"]
    assert "| data | mix | nofa_mix | SWA 32 + sinks 4 |" in report and "| reference |" in report
    assert "| SWA 32 + sinks 4 + 1 probed full layers |" in report and "Layers the probe chose" in report
    for name in ("ladder.png", "bins.png", "tradeoff.png"):
        assert (tmp_path / "report" / name).stat().st_size > 10_000


def test_naive_swa_evidence_per_depth_bin():
    from experiments.adaptation.stats import evaluate_targets, summarize

    naive_acc = {s: (0.5, 0.0) for s in range(3)}  # the first half of the in-range questions, both depth bins
    rows = synthetic_rows(
        {
            ("none", "full attention"): (FULL, None, {s: (1.0, 1.0) for s in range(3)}),
            ("none", "SWA 512"): (NAIVE, None, naive_acc),
        }
    )
    naive = next(
        t
        for t in evaluate_targets(
            summarize(rows, resamples=50), "fa", FA_NAME, "SWA 512", depth_bins=("first 5%", "middle")
        )
        if "naive" in t["target"]
    )
    for name in ("first 5%", "middle"):
        in_bin = [r for r in rows if r["depth_bin"] == name and r["seed"] == 0]
        share = sum(r["correct"] for r in in_bin if r["setting"] == "SWA 512") / sum(
            r["correct"] for r in in_bin if r["setting"] == "full attention"
        )
        assert f"; fact in the {name}: {100 * share:.1f}% of full" in naive["evidence"]


def test_training_curve_start_end_and_largest_grad_norm():
    from experiments.adaptation.study import training_curve

    history = [
        {"loss": x, "grad_norm": g, "step": i}
        for i, (x, g) in enumerate(zip([0.1, 0.2, 0.3, 0.5, 0.9], [1, 7, 2, 3, 4]))
    ]
    history.append({"train_loss": 0.4, "train_runtime": 9.0})  # the trainer's closing summary has no "loss"
    curve = training_curve(history)
    assert curve["lora_loss_start"] == pytest.approx(0.2) and curve["lora_loss_end"] == pytest.approx(1.7 / 3, abs=1e-5)
    assert curve["lora_grad_norm_max"] == 7
    assert training_curve(history, ends=1) == {"lora_loss_start": 0.1, "lora_loss_end": 0.9, "lora_grad_norm_max": 7}
    assert training_curve([{"train_loss": 0.4}]) == {}


def test_read_seed_logs_keys_by_seed_and_file(tmp_path):
    from experiments.adaptation.study import read_seed_logs

    (tmp_path / "a" / "seed3" / "lora_logs").mkdir(parents=True)
    (tmp_path / "a" / "seed3" / "lora_logs" / "no_fa.jsonl").write_text('{"loss": 1.0}\n\n{"loss": 0.5}\n')
    (tmp_path / "a" / "seed3" / "pretrain_log.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "b" / "seed12").mkdir(parents=True)
    (tmp_path / "b" / "seed12" / "pretrain_log.jsonl").write_text('{"step": 7}\n')
    paths = [tmp_path / "a", tmp_path / "b"]
    assert read_seed_logs(paths, "lora_logs/*.jsonl") == {(3, "no_fa"): [{"loss": 1.0}, {"loss": 0.5}]}
    assert read_seed_logs(paths, "pretrain_log.jsonl") == {
        (3, "pretrain_log"): [{"step": 1}],
        (12, "pretrain_log"): [{"step": 7}],
    }


def test_sweep_arms_are_compared_with_their_own_reference():
    from experiments.adaptation.report import sweep_table
    from experiments.adaptation.stats import summarize
    from experiments.adaptation.study import Arm, StudyConfig

    fa, no_fa = SWAAConfig(512, 32, True, [1, 5]), NO_FA
    arms = [
        Arm("fa", fa, group="ladder", eval_ladder=True),
        Arm("nofa", no_fa, group="kv"),
        Arm("nofa_lr", no_fa, group="sweep", factor="learning rate", level="low", learning_rate=1e-4),
        Arm("fa_lr", fa, group="sweep", factor="learning rate", level="low, FA", learning_rate=1e-4, reference="fa"),
    ]
    study = StudyConfig(arms=arms, sweep_reference="nofa")
    assert study.reference_of(arms[3]).name == "fa" and study.reference_of(arms[2]).name == "nofa"
    fa_name, no_fa_name = study.arm_label(arms[0]), study.arm_label(arms[1])
    rows = synthetic_rows(
        {
            ("none", "full attention"): (FULL, None, {s: (1.0, 0.0) for s in range(3)}),
            ("fa", fa_name): (fa, fa_name, {0: (0.9, 0.0), 1: (0.8, 0.0), 2: (0.7, 0.0)}),
            ("fa_lr", fa_name): (fa, fa_name, {0: (1.0, 0.0), 1: (0.9, 0.0), 2: (0.8, 0.0)}),  # +10 on each seed
            ("nofa", no_fa_name): (no_fa, no_fa_name, {s: (0.5, 0.0) for s in range(3)}),
            ("nofa_lr", no_fa_name): (no_fa, no_fa_name, {s: (0.3, 0.0) for s in range(3)}),  # -20
        }
    )
    table = sweep_table(summarize(rows, resamples=100), rows, study, resamples=100)
    lines = {line.split(" | ")[2]: line for line in table.splitlines()[2:]}
    assert "| reference |" in lines["nofa"]
    assert "| -20.0% [t -20, -20; boot" in lines["nofa_lr"] and lines["nofa_lr"].count("(vs nofa)") == 1
    assert "| 10.0% [t 10, 10; boot" in lines["fa_lr"] and "(vs fa)" in lines["fa_lr"]
    for bad in ("fa_lr", "nowhere"):
        with pytest.raises(ValueError, match="is not another arm"):
            StudyConfig(arms=[*arms[:3], dataclasses.replace(arms[3], reference=bad)], sweep_reference="nofa")


def test_read_results_keeps_separate_runs_apart(tmp_path):
    import subprocess
    import sys

    from experiments.adaptation.report import _bases
    from experiments.adaptation.study import read_results

    rows = synthetic_rows({("none", "full attention"): (FULL, None, {0: (1.0, 0.0), 2: (0.5, 0.0)})}, questions=4)
    for run in ("run1", "run2"):
        for seed in (0, 2):
            path = tmp_path / run / f"seed{seed}" / "rows" / f"rows-s{seed}-base_ladder.jsonl"
            path.parent.mkdir(parents=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["seed"] == seed))
        (tmp_path / run / "seed2" / "pretrain_log.jsonl").write_text(json.dumps({"step": int(run[-1])}) + "\n")
    paths = [tmp_path / "run1", tmp_path / "run2"]
    with pytest.raises(ValueError, match=r"seed 2: the pretraining logs .* differ"):  # two bases, not one run
        read_results(paths)
    # A directory named twice (or two overlapping copies of one) answers each question twice: refused.
    with pytest.raises(ValueError, match=r"seed 0, LoRA none, setting 'full attention', question 0: answered twice"):
        read_results([tmp_path / "run2", tmp_path / "run2"])
    separate, logs = read_results(paths, separate_runs=True)
    assert sorted({r["seed"] for r in separate}) == [0, 2, 100, 102]
    assert [r for r in separate if r["seed"] == 102] == [{**r, "seed": 102} for r in rows if r["seed"] == 2]
    assert set(logs) == {(2, "pretrain_log"), (102, "pretrain_log")}
    # A run in two directories (LoRAs trained later on the same bases) is one entry: its rows keep their seeds.
    later = [dict(r, lora="later") for r in rows]
    path = tmp_path / "run2b" / "seed2" / "rows" / "rows-s2-arm-later.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in later if r["seed"] == 2))
    (tmp_path / "run2b" / "seed2" / "pretrain_log.jsonl").write_text(json.dumps({"step": 2}) + "\n")
    parts, logs = read_results([tmp_path / "run1", [tmp_path / "run2", tmp_path / "run2b"]], separate_runs=True)
    assert [r for r in parts if r["lora"] == "later"] == [{**r, "seed": 102} for r in later if r["seed"] == 2]
    assert len(parts) == len(separate) + len(later) // 2 and set(logs) == {(2, "pretrain_log"), (102, "pretrain_log")}
    with pytest.raises(ValueError, match="seed 2: the pretraining logs"):  # run1's base 2 is not run2b's
        read_results([[tmp_path / "run1", tmp_path / "run2b"]], separate_runs=True)
    # On the command line "A,B" is one run in two directories; the refusal reaches the user as an error.
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "experiments.adaptation.run_study", "report", "--separate-runs", "--results"]
    twice = subprocess.run(
        command + [str(tmp_path / "run1"), f"{tmp_path / 'run2'},{tmp_path / 'run2'}", "--out", str(tmp_path / "rep")],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    assert twice.returncode == 2 and "question 0: answered twice" in twice.stderr and not (tmp_path / "rep").exists()
    assert _bases([0, 1, 2]) == "3 seeds (0, 1, 2)"
    assert _bases([0, 2, 100, 102]).startswith("4 bases of 2 runs (0, 2, 100, 102:")


def test_runs_pool_as_one_only_where_their_bases_are_the_same(tmp_path):
    """Seed 1's pretraining logs agree but for their timings (a deterministic pretraining, repeated):
    one base, pooled. Where they differ the two runs hold two bases, and pooling them as one is refused."""
    import subprocess
    import sys

    from experiments.adaptation.study import check_same_bases, read_results

    rows = synthetic_rows({("none", "full attention"): (FULL, None, {1: (1.0, 0.0)})}, questions=4)
    log = [{"step": 25, "answer_loss": 0.5}, {"step": 50, "answer_loss": 0.25}]
    for run, elapsed, layout in (("a", 1.0, "base/pretrain_log.jsonl"), ("b", 2.0, "pretrain_log.jsonl")):
        seed_dir = tmp_path / run / "seed1"
        (seed_dir / "rows").mkdir(parents=True)
        rows_of_run = [dict(r, lora=run) for r in rows]  # each run its own LoRA of the base
        (seed_dir / "rows" / f"rows-s1-{run}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_of_run))
        (seed_dir / layout).parent.mkdir(parents=True, exist_ok=True)
        (seed_dir / layout).write_text("".join(json.dumps({**e, "elapsed_s": elapsed}) + "\n" for e in log))
    merged, _ = read_results([tmp_path / "a", tmp_path / "b"])
    assert {r["seed"] for r in merged} == {1} and len(merged) == 2 * len(rows)
    assert check_same_bases([tmp_path / "a", tmp_path / "b"]) == [1] and check_same_bases([tmp_path / "a"]) == []
    log[1]["answer_loss"] = 0.26
    (tmp_path / "b" / "seed1" / "pretrain_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    with pytest.raises(ValueError, match=r"seed 1: the pretraining logs .* differ \(entry 1\).*--separate-runs"):
        read_results([tmp_path / "a", tmp_path / "b"])
    assert len(read_results([tmp_path / "a", tmp_path / "b"], separate_runs=True)[0]) == 2 * len(rows)
    # The command a GPU call runs after pretraining again, to know whether its bases are the earlier ones.
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "experiments.adaptation.run_study", "same-bases", "--results"]
    differ = subprocess.run(
        command + [str(tmp_path / "a"), str(tmp_path / "b")], cwd=root, capture_output=True, text=True
    )
    assert differ.returncode == 1 and "different bases: seed 1:" in differ.stderr
    log[1]["answer_loss"] = 0.25
    (tmp_path / "b" / "seed1" / "pretrain_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    same = subprocess.run(
        command + [str(tmp_path / "a"), str(tmp_path / "b")], cwd=root, capture_output=True, text=True
    )
    assert same.returncode == 0 and same.stdout.startswith("same bases: seed(s) 1;")


def test_write_task_data_writes_what_the_tasks_read(tmp_path):
    from experiments.adaptation.study import write_task_data

    study = toy_study(tmp_path / "study")
    paths = write_task_data(study, ["base_probe", "arm:nofa_mix"])
    assert set(paths) == {"eval_bins", "train", "train_mix"}
    written = {p.stem for p in study.data_dir.glob("*.parquet")}
    assert written == {"eval_bins", "train", "train_short", "train_mix"}  # the mix is made of train + train_short
    assert pq.read_table(paths["train_mix"]).num_rows == 2 * min(
        study.data_counts["train"], study.data_counts["train_short"]
    )


def test_a_probed_arm_waits_for_its_probe(tmp_path, monkeypatch):
    import experiments.adaptation.study as study_module
    from experiments.adaptation.study import Arm

    study = toy_study(tmp_path / "study")
    base = study.seed_dir(0) / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    monkeypatch.setattr(study_module, "run_task", lambda *a: pytest.fail("ran a probed arm without its probe"))
    assert study_module.run_tasks(study, 0, ["arm:probed"]) == []
    probed = next(a for a in study.arms if a.probed)
    with pytest.raises(ValueError, match="run base_probe first"):
        study.seed_arm(probed, 0)
    study.probe_path(0).write_text(json.dumps({"chosen": [1, 0]}))
    assert study.seed_arm(probed, 0).swaa.non_sliding_layers == [0, 1]
    assert study.arm_label(probed) == "SWA 32 + sinks 4 + 1 probed full layers"  # one layer, as full_layers
    with pytest.raises(ValueError, match="list none in swaa"):
        Arm.from_dict({"name": "x", "probed": True, "swaa": {"sliding_window_size": 8, "non_sliding_layers": [1]}})


def test_lanes_split_a_seed_only_once_its_base_exists(tmp_path):
    from experiments.adaptation.study import estimate_s, split_lanes

    study = toy_study(tmp_path / "study")
    tasks = study.tasks()
    # No base yet: one lane per seed, pretraining first.
    assert split_lanes(study, tasks, 3) == [(0, tasks), (1, tasks)]
    base = study.seed_dir(1) / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    done = study.rows_path(1, "pretrain")
    done.parent.mkdir(parents=True)
    done.write_text("")
    lanes = split_lanes(study, tasks, 2)
    assert lanes[0] == (0, tasks)
    seed1 = [lane for seed, lane in lanes if seed == 1]
    assert len(seed1) == 2 and sorted(t for lane in seed1 for t in lane) == sorted(tasks[1:])
    # Dealt by estimate: the lanes' estimated work differs by at most the largest task (or the
    # probe with its probed arms, which go together).
    work = [sum(estimate_s(study, t) for t in lane) for lane in seed1]
    probed = [f"arm:{a.name}" for a in study.arms if a.probed]
    assert probed and next(lane for lane in seed1 if "base_probe" in lane)[-len(probed) :] == probed
    largest = max(estimate_s(study, "base_probe") + sum(estimate_s(study, t) for t in probed), *map(
        lambda t: estimate_s(study, t), tasks[1:]))  # fmt: skip
    assert abs(work[0] - work[1]) <= largest
    # With the probe done, a probed arm is dealt like any other task.
    (study.seed_dir(1) / "rows" / "rows-s1-base_probe.jsonl").write_text("")
    seed1 = [lane for seed, lane in split_lanes(study, tasks, 2) if seed == 1]
    assert len(seed1) == 2 and not any("base_probe" in lane for lane in seed1)


def test_a_lane_leaves_what_would_end_after_the_deadline(tmp_path, monkeypatch):
    import time

    from experiments.adaptation import study as study_module

    study = toy_study(tmp_path / "study")
    ran = []
    monkeypatch.setattr(study_module, "run_task", lambda study, seed, task: ran.append(task))
    base = study.seed_dir(0) / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    ladder = study_module.estimate_s(study, "base_ladder")
    # Enough time for base_ladder alone (x2 on a shared GPU), not for the arms after it.
    deadline = time.time() + 2 * ladder + 1
    done = study_module.run_tasks(study, 0, ["base_ladder", "arm:fa"], deadline, slowdown=2.0)
    assert ran == done == ["base_ladder"]
    # Without a base (and no chunks to rebuild it from) nothing that needs one starts.
    ran.clear()
    assert study_module.run_tasks(study, 1, ["base_ladder"], None) == [] and ran == []


def test_a_lane_past_the_deadline_is_stopped(tmp_path, monkeypatch):
    import dataclasses
    import time

    import yaml

    from experiments.adaptation.study import Estimates, run_parallel

    monkeypatch.chdir(tmp_path)
    # Every estimate 0: the lane starts pretraining, which takes longer than the 1-s deadline.
    zero = Estimates(**{f.name: 0.0 for f in dataclasses.fields(Estimates)})
    study = dataclasses.replace(toy_study(tmp_path / "study"), seeds=[0], estimates=zero)
    study_path = tmp_path / "study.yaml"
    study_path.write_text(yaml.safe_dump(dataclasses.asdict(study)))
    lines = []
    started = time.monotonic()
    done = run_parallel(study, str(study_path), ["pretrain"], deadline_s=1.0, grace_s=0.0, log=lines.append)
    assert done == {0: []} and any("stopped at the deadline" in line for line in lines)
    assert not study.rows_path(0, "pretrain").exists() and time.monotonic() - started < 30


def test_at_most_max_running_lanes_run_at_once(tmp_path, monkeypatch):
    """Lanes beyond max_running wait for a free place (six LoRA lanes ran out of one GPU's memory)."""
    import dataclasses
    import subprocess

    import experiments.adaptation.study as study_module

    monkeypatch.chdir(tmp_path)
    study = dataclasses.replace(toy_study(tmp_path / "study"), seeds=[0, 1, 2])
    monkeypatch.setattr(study_module, "ensure_data", lambda *a, **k: None)
    state = {"running": 0, "most": 0, "started": []}

    class FakeLane:  # a lane process that runs for three polls
        def __init__(self, command, **kwargs):
            self.pid, self.polls, self.returncode = 0, 0, None
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
            state["started"].append(command[command.index("--seed") + 1])

        def poll(self):
            self.polls += 1
            if self.polls == 3 and self.returncode is None:
                self.returncode = 0
                state["running"] -= 1
            return self.returncode

    monkeypatch.setattr(subprocess, "Popen", FakeLane)
    lines = []
    study_module.run_parallel(study, "study.yaml", ["pretrain"], max_running=2, poll_s=0.0, log=lines.append)
    assert state["most"] == 2 and state["started"] == ["0", "1", "2"] and state["running"] == 0
    assert sum("exit 0" in line for line in lines) == 3
    with pytest.raises(ValueError, match="max_running"):
        study_module.run_parallel(study, "study.yaml", ["pretrain"], max_running=0)


@pytest.mark.slow
def test_seeds_side_by_side_give_the_rows_of_the_serial_run(tmp_path, monkeypatch):
    import dataclasses
    import os
    import subprocess
    import sys
    import tarfile

    import yaml

    from experiments.adaptation.study import collect_all, read_rows, run_parallel

    monkeypatch.chdir(tmp_path)
    study = toy_study(tmp_path / "study")
    study_path = tmp_path / "study.yaml"
    study_path.write_text(yaml.safe_dump(dataclasses.asdict(study)))
    lines = []
    first = run_parallel(study, str(study_path), ["pretrain", "base_ladder"], deadline_s=600, log=lines.append)
    assert first == {0: ["pretrain", "base_ladder"], 1: ["pretrain", "base_ladder"]}
    assert sum(line.startswith("lane") and "exit 0" in line for line in lines) == 2
    # The rest through the GPU script, as a GPU machine runs it (2 lanes per seed, results packed).
    script = Path(__file__).resolve().parent.parent / "experiments/adaptation/run_parallel.sh"
    env = {
        **os.environ,
        "STUDY": str(study_path),
        "OUT": str(tmp_path),
        "LANES": "2",
        "MPS": "off",
        "PYTHON": sys.executable,
    }
    done = subprocess.run(
        ["bash", str(script), ",".join(study.tasks()), "600"], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout.splitlines()[-2]) == {"0": study.tasks(), "1": study.tasks()}
    assert len(re.findall(r"^lane \d+: exit 0$", done.stdout, re.M)) == 4  # 2 lanes per seed
    assert "=== MPS off" in done.stdout
    rows = read_rows([study.out_dir])
    ladder = {(r["seed"], r["setting"]) for r in rows if r["lora"] == "none" and r["group"] == "ladder"}
    assert len(ladder) == 2 * len(study.ladder(2))
    assert {r["lora"] for r in rows} == {"none", "fa", "nofa_mix", "probed"}
    copied = collect_all(study, tmp_path / "out")
    assert tmp_path / "out" / "seed1" / "pretrain_log.jsonl" in copied
    assert len(read_rows([tmp_path / "out"])) == len(rows)
    assert not any(path.suffix in (".safetensors", ".bin") for path in copied)
    with tarfile.open(tmp_path / "study-results.tgz") as packed:  # what the script copied out
        names = packed.getnames()
        packed.extractall(tmp_path / "unpacked", filter="data")
    assert "./seed0/logs/lane0.log" in names and not any(n.endswith(".safetensors") for n in names)
    assert len(read_rows([tmp_path / "unpacked"])) == len(rows)


@pytest.mark.parametrize("accuracy,agrees", [(1.0, True), (0.9, False), (0.5, True)])
def test_target_verdicts_say_whether_the_intervals_agree(accuracy, agrees):
    from experiments.adaptation.stats import evaluate_targets, summarize

    rows = synthetic_rows({("none", "full attention"): (FULL, None, {s: (accuracy, 0.0) for s in range(3)})})
    summary = summarize(rows, resamples=500)
    (full, *_) = evaluate_targets(summary, "fa", FA_NAME, "SWA 512")
    # 0.9 on 20 questions: the t interval is one point (no spread over seeds), the bootstrap reaches below 85%.
    assert full["met"] == (accuracy >= 0.85) and full["interval_agrees"] is agrees


@pytest.mark.parametrize("base_only_seed", [False, True])
def test_arms_table_gives_what_each_lora_adds_paired_with_its_base(base_only_seed):
    """With `base_only_seed`, seed 3 has a base row and no LoRA (pooled runs): it must not enter
    the LoRA's "no LoRA" cell (with it that cell would read 40.0%)."""
    from experiments.adaptation.report import arms_table
    from experiments.adaptation.stats import summarize
    from experiments.adaptation.study import Arm, StudyConfig, setting_name

    study = StudyConfig(
        arms=[Arm("fa", SWAAConfig(512, 32, True, [1, 5]), group="ladder", eval_ladder=True), Arm("nofa", NO_FA)],
        sweep_reference="nofa",
    )
    own = setting_name(NO_FA)
    extra = {3: (0.1, 0.0)} if base_only_seed else {}
    rows = synthetic_rows(
        {
            ("none", "full attention"): (FULL, None, {s: (0.9, 0.0) for s in range(3 + len(extra))}),
            ("none", own): (NO_FA, None, {0: (0.5, 0.0), 1: (0.4, 0.0), 2: (0.6, 0.0), **extra}),
            ("nofa", own): (NO_FA, own, {0: (0.7, 0.0), 1: (0.6, 0.0), 2: (0.8, 0.0)}),
        }
    )
    line = next(x for x in arms_table(summarize(rows, resamples=100), study, rows, 100).splitlines() if "| nofa |" in x)
    cells = [c.strip() for c in line.split("|")]
    # Every seed gains 20 points: paired, the t interval has no width (unpaired, it would span the seeds).
    assert cells[7].startswith("50.0% [t 25, 75;"), cells[7]
    assert cells[8].startswith("70.0% [t 45, 95;") and cells[9].startswith("20.0% [t 20, 20;")


def test_bases_table_shows_the_held_out_checks_around_the_switch_to_long_prompts():
    from experiments.adaptation.report import bases_table

    log = [
        {"step": 10, "phase": 0, "heldout_exact": 0.2},
        {"step": 20, "phase": 0, "heldout_exact": 0.9},
        {"step": 25, "phase": 0, "loss": 1.0},  # a step without a check
        {"step": 30, "phase": 1, "heldout_exact": 0.05},
        {"step": 40, "phase": 1, "heldout_exact": 0.0},
        {"step": 50, "phase": 1, "heldout_exact": 0.6},
        {"step": 55, "phase": 1, "loss": 0.5},
    ]
    table = bases_table([], {(7, "pretrain_log"): log, (8, "pretrain_log"): [{"step": 3, "phase": 0}]})
    assert "| 7 | 55 | 90.0% (20) | 0.0% (40) | 60.0% (50) | - |" in table
    assert "| 8 | 3 | - | - | - | - |" in table  # no check logged


def test_the_ladder_shows_every_fa_decode_lora_on_the_rungs_it_was_evaluated_on(tmp_path):
    from experiments.adaptation.report import ladder_table, plot_ladder
    from experiments.adaptation.stats import summarize

    ladder = ["full attention", "SWA 512", FA_NAME]
    rows = synthetic_rows(
        {
            ("none", "full attention"): (FULL, None, {s: (0.9, 0.5) for s in range(3)}),
            ("none", "SWA 512"): (NAIVE, None, {s: (0.1, 0.0) for s in range(3)}),
            ("none", FA_NAME): (FA, None, {s: (0.9, 0.5) for s in range(3)}),
            ("low_lr", "full attention"): (FULL, "x", {s: (0.95, 0.5) for s in range(3)}),
            ("low_lr", FA_NAME): (FA, "x", {s: (0.95, 0.5) for s in range(3)}),
        }
    )
    summary = summarize(rows, resamples=100)
    table = ladder_table(summary, ladder, ["fa", "low_lr"]).splitlines()
    assert [line.split(" | ")[:2] for line in table[2:]] == [
        ["| full attention", "none"], ["| SWA 512", "none"], [f"| {FA_NAME}", "none"],
        ["| full attention", "low_lr"], [f"| {FA_NAME}", "low_lr"],
    ]  # fmt: skip
    assert plot_ladder(summary, ladder, ["fa", "low_lr"], tmp_path / "ladder.png").stat().st_size > 0


def test_pareto_keeps_the_points_nothing_beats():
    from experiments.adaptation.report import pareto

    points = [(0, 90), (50, 60), (70, 40), (70, 30), (60, 20), (50, 60)]
    assert pareto(points, "kv_cache_saved") == [(0, 90), (50, 60), (70, 40)]
    costs = [(100, 90), (30, 80), (40, 70), (10, 5)]
    assert pareto(costs, "prefill_cost") == [(10, 5), (30, 80), (100, 90)]


def test_plan_lists_every_job_with_its_command():
    from experiments.adaptation.run_study import format_plan
    from experiments.adaptation.study import StudyConfig, plan_jobs

    study = StudyConfig()
    text = format_plan(study)
    jobs = plan_jobs(study)
    for job in jobs:
        assert f"`bash experiments/adaptation/run_study.sh {job.name}`" in text
    assert f"{len(jobs)} jobs, {sum(j.estimate_s for j in jobs):.0f} s estimated" in text


def test_report_command_on_a_results_file(tmp_path):
    import subprocess
    import sys

    rows = synthetic_rows(
        {
            ("none", "full attention"): (FULL, None, {s: (0.9, 0.5) for s in range(3)}),
            ("none", "SWA 512"): (NAIVE, None, {s: (0.0, 0.0) for s in range(3)}),
        }
    )
    (tmp_path / "rows-s0-x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "experiments.adaptation.run_study", "report", "--results", str(tmp_path)]
        + [
            "--out",
            str(tmp_path / "report"),
            "--resamples",
            "100",
            "--study",
            str(root / "experiments/adaptation/study.yaml"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    targets = json.loads(done.stdout)
    assert [t["met"] for t in targets] == [True, True, None, None]
    assert "| full attention | none | 70.0% [t 70, 70;" in (tmp_path / "report" / "report.md").read_text()
