"""Data of the adaptation experiment (experiments/adaptation/): long-context retrieval questions with
one or two hops, in the fusang_long schema, and plain language-model text.

A prompt is filler (synthetic.py's passage builder) with facts planted at random depths and
a question at the end. Single-hop rows ask for one fact ("What is the access code of the
amber vault?"); two-hop rows chain a link fact ("The neighbor of the amber vault is the
crimson harbor.") into a value fact about the linked entity, and the response spells out
the chain before the value, so each hop is one look-up into the prompt:

    Q: What is the access code of the neighbor of the amber vault?
    A: The neighbor of the amber vault is the crimson harbor. The access code of the crimson harbor is 4821.

Lengths are given in tokens of the shipped tokenizer (converted with `TOKENS_PER_WORD`,
which the filler holds to within about 1%). Train and eval rows draw their entities from
synthetic.py's disjoint pools; every row depends only on (split, seed).

Language-model documents are passages whose facts are restated, in another order, at the
end ("To recall: ..."): next-token prediction there is retrieval, which is what the model
must learn before any question is asked.
"""

from __future__ import annotations

import logging
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from swaa_train.synthetic import (
    ATTRIBUTES,
    Fact,
    build_passage,
    render_prompt,
    split_entities,
    words_before,
    write_parquet,
)


def show_progress() -> None:
    """For the experiments/adaptation/ commands: log this package's progress (INFO), others' warnings."""
    logging.basicConfig(format="[%(asctime)s] %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("swaa_train").setLevel(logging.INFO)


# Prompt tokens per passage word with the shipped tokenizer (swaa_train/assets/tiny-qwen3),
# measured on the filler: 1.168-1.175 for prompts of 3k-9k words.
TOKENS_PER_WORD = 1.17
LINK_ATTRIBUTE = "neighbor"
RECALL_HEADER = "To recall:"


def _entities(rng: random.Random, split: str, count: int) -> list[str]:
    return rng.sample(split_entities(split), count)


def _value_fact(rng: random.Random, entity: str) -> Fact:
    attribute = rng.choice(sorted(ATTRIBUTES))
    return Fact(entity, attribute, ATTRIBUTES[attribute](rng))


def _link(a: str, b: str) -> Fact:
    return Fact(a, LINK_ATTRIBUTE, f"the {b}")


def _num_words(rng: random.Random, min_tokens: int, max_tokens: int) -> int:
    # Aim 3% inside the range so the ~1% spread of tokens per word keeps prompts in it.
    return round(rng.uniform(1.03 * min_tokens, 0.97 * max_tokens) / TOKENS_PER_WORD)


def _distractors(rng: random.Random, entities: list[str], count: int) -> list[Fact]:
    """Value facts and link facts about `entities` (used once each): the look-ups must match the entity."""
    facts, pool = [], list(entities)
    while len(facts) < count and pool:
        if len(pool) >= 2 and rng.random() < 0.4:
            facts.append(_link(pool.pop(), pool.pop()))
        else:
            facts.append(_value_fact(rng, pool.pop()))
    return facts


def make_question_row(
    rng: random.Random,
    split: str,
    *,
    hops: int,
    num_words: int,
    min_depth: float,
    max_depth: float,
    num_distractors: int,
) -> dict:
    """One row with a `hops`-hop question (1 or 2); its facts sit at depths in [min_depth, max_depth]."""
    return _question_row(
        rng,
        split,
        hops=hops,
        num_words=num_words,
        min_depth=min_depth,
        max_depth=max_depth,
        num_distractors=num_distractors,
    )[0]


def _question_row(
    rng: random.Random,
    split: str,
    *,
    hops: int,
    num_words: int,
    min_depth: float,
    max_depth: float,
    num_distractors: int,
) -> tuple[dict, list[float]]:
    """make_question_row's row and the depth (share of passage words before it) of each fact of the chain."""
    if hops not in (1, 2):
        raise ValueError(f"hops must be 1 or 2, got {hops!r}")
    names = _entities(rng, split, hops + 2 * num_distractors)
    chain = names[:hops]
    target = _value_fact(rng, chain[-1])
    facts = [target] if hops == 1 else [_link(chain[0], chain[1]), target]
    planted = [(fact.sentence(), rng.uniform(min_depth, max_depth)) for fact in facts]
    planted += [(fact.sentence(), rng.random()) for fact in _distractors(rng, names[hops:], num_distractors)]
    rng.shuffle(planted)
    sentences, positions = build_passage(rng, num_words, planted)
    where = {sentence: position for (sentence, _), position in zip(planted, positions)}
    if hops == 1:
        question = target.question()
    else:
        word = "Who" if target.attribute == "keeper" else "What"
        question = f"{word} is the {target.attribute} of the {LINK_ATTRIBUTE} of the {chain[0]}?"
    total = sum(len(s.split()) for s in sentences)
    row = {
        "question": question,
        "answer": target.value,
        "prompt": render_prompt(sentences, question),
        "response": " ".join(fact.sentence() for fact in facts),
        "judge": 1,
        "depth": words_before(sentences, where[target.sentence()]) / total,
        "hops": hops,
    }
    return row, [words_before(sentences, where[fact.sentence()]) / total for fact in facts]


def make_question_rows(
    num_rows: int,
    *,
    seed: int = 0,
    split: str = "train",
    min_tokens: int = 2048,
    max_tokens: int = 16384,
    two_hop_fraction: float = 0.5,
    min_depth: float = 0.0,
    max_depth: float = 0.75,
    num_distractors: int = 4,
) -> list[dict]:
    """`num_rows` rows of single- and two-hop questions over prompts of `min_tokens`..`max_tokens` tokens.

    fusang_long fields (question, answer, prompt, response, judge = 1) plus `depth` (of the
    answer's fact) and `hops`. Deterministic in (split, seed); splits share no entity.
    """
    if not 0 < min_tokens <= max_tokens:
        raise ValueError(f"need 0 < min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    if not 0.0 <= two_hop_fraction <= 1.0:
        raise ValueError(f"two_hop_fraction must be in [0, 1], got {two_hop_fraction}")
    if not 0.0 <= min_depth <= max_depth <= 1.0:
        raise ValueError(f"need 0 <= min_depth <= max_depth <= 1, got {min_depth}, {max_depth}")
    rng = random.Random(f"swaa-repro-qa/{split}/{seed}")
    return [
        make_question_row(
            rng,
            split,
            hops=2 if rng.random() < two_hop_fraction else 1,
            num_words=_num_words(rng, min_tokens, max_tokens),
            min_depth=min_depth,
            max_depth=max_depth,
            num_distractors=num_distractors,
        )
        for _ in range(num_rows)
    ]


# ------------------------------------------------------------------------------------------
# The held-out set of the multi-seed study: every question in one length bin and one depth bin
# ------------------------------------------------------------------------------------------
# Prompt tokens (shipped tokenizer) of each length bin, [low, high). Pretraining and the LoRA
# see 2k-16k-token prompts (TRAIN_RANGE), so the last bin is longer than anything trained.
LENGTH_BINS = {"2k-4k": (2048, 4096), "4k-8k": (4096, 8192), "8k-16k": (8192, 16384), "16k-24k": (16384, 24576)}
TRAIN_RANGE = (2048, 16384)
# Depth of every fact of a question's chain (share of the passage's words before it), [low, high].
DEPTH_BINS = {"first 5%": (0.0, 0.05), "middle": (0.4, 0.6), "last 20%": (0.8, 1.0)}
EVAL_QUESTIONS_PER_CELL = 25  # 4 length bins x 3 depth bins x 25 = 300 questions


def make_eval_cell(
    count: int,
    *,
    seed: int,
    length_bin: str,
    depth_bin: str,
    length_bins: dict[str, tuple[int, int]] = LENGTH_BINS,
    depth_bins: dict[str, tuple[float, float]] = DEPTH_BINS,
    train_range: tuple[int, int] = TRAIN_RANGE,
    split: str = "eval",
    num_distractors: int = 4,
    max_tries: int = 100,
) -> list[dict]:
    """`count` questions of one (length bin, depth bin) cell, single- and two-hop in turn.

    Facts are planted in the middle 80% of the depth bin; the passage builder moves them to
    the nearest sentence boundary and the distractors shift them, so a row whose chain leaves
    the bin is drawn again (at most `max_tries` times). Rows get the bins' names, `in_range`
    (the length bin lies inside `train_range`) and `cell_index`.
    """
    low, high = length_bins[length_bin]
    shallow, deep = depth_bins[depth_bin]
    margin = 0.1 * (deep - shallow)
    in_range = train_range[0] <= low and high <= train_range[1]
    rng = random.Random(f"swaa-repro-evalbins/{split}/{seed}/{length_bin}/{depth_bin}")
    rows = []
    for k in range(count):
        for _ in range(max_tries):
            row, depths = _question_row(
                rng,
                split,
                hops=1 + k % 2,
                num_words=_num_words(rng, low, high),
                min_depth=shallow + margin,
                max_depth=deep - margin,
                num_distractors=num_distractors,
            )
            if all(shallow <= d <= deep for d in depths):
                break
        else:
            raise ValueError(f"no row of {length_bin} tokens kept its facts in {depth_bin} in {max_tries} draws")
        rows.append({**row, "length_bin": length_bin, "depth_bin": depth_bin, "in_range": in_range, "cell_index": k})
    return rows


def _eval_cell(job: tuple) -> list[dict]:
    count, seed, length_bin, depth_bin, kwargs = job
    return make_eval_cell(count, seed=seed, length_bin=length_bin, depth_bin=depth_bin, **kwargs)


def make_eval_set(
    questions_per_cell: int = EVAL_QUESTIONS_PER_CELL,
    *,
    seed: int = 0,
    length_bins: dict[str, tuple[int, int]] = LENGTH_BINS,
    depth_bins: dict[str, tuple[float, float]] = DEPTH_BINS,
    train_range: tuple[int, int] = TRAIN_RANGE,
    workers: int | None = None,
    **kwargs,
) -> list[dict]:
    """The held-out set: `questions_per_cell` questions (eval entities) for every pair of a length
    bin and a depth bin, cells in the order of the two dicts. Deterministic in `seed`: each cell
    has its own random stream, so the set is the same whatever the number of worker processes."""
    common = dict(length_bins=length_bins, depth_bins=depth_bins, train_range=train_range, **kwargs)
    jobs = [(questions_per_cell, seed, lb, db, common) for lb in length_bins for db in depth_bins]
    if workers == 0:
        return [row for job in jobs for row in _eval_cell(job)]
    with ProcessPoolExecutor(workers) as pool:
        return [row for cell in pool.map(_eval_cell, jobs) for row in cell]


def make_lm_texts(
    num_docs: int,
    *,
    seed: int = 0,
    split: str = "train",
    min_tokens: int = 256,
    max_tokens: int = 16384,
    num_facts: int = 6,
    repeat_fraction: float = 0.3,
) -> list[dict]:
    """`num_docs` language-model documents: {"text": a passage with facts, then the facts restated
    in another order, "recall_from": the character offset where the restatement starts}.

    In the second half of each passage, `repeat_fraction` of the filler sentences are verbatim
    copies of earlier ones: copying a span seen before is the first retrieval skill a model
    learns (induction heads), and looking facts up builds on it.
    """
    rng = random.Random(f"swaa-repro-lm/{split}/{seed}")
    docs = []
    for _ in range(num_docs):
        names = _entities(rng, split, 2 * num_facts)
        facts = _distractors(rng, names, num_facts)
        planted = [(fact.sentence(), rng.uniform(0.0, 0.9)) for fact in facts]
        sentences, positions = build_passage(rng, _num_words(rng, min_tokens, max_tokens), planted)
        _repeat_sentences(rng, sentences, set(positions), repeat_fraction)
        recalled = rng.sample(facts, len(facts))
        text = render_prompt(sentences, "").removesuffix("\n\nQuestion: ") + f"\n\n{RECALL_HEADER}"
        docs.append({"text": text + " " + " ".join(f.sentence() for f in recalled), "recall_from": len(text)})
    return docs


def make_drill_texts(
    num_docs: int, *, seed: int = 0, split: str = "train", min_facts: int = 1, max_facts: int = 8, **_ignored
) -> list[dict]:
    """`num_docs` look-up drills: facts with no filler, then all of them restated in another order
    after RECALL_HEADER (`recall_from` as in make_lm_texts). Every restated value is one look-up
    in a short context, so the copy circuit is learnt here first (measured on CPU, docs/adaptation.md)."""
    rng = random.Random(f"swaa-repro-drill/{split}/{seed}")
    docs = []
    for _ in range(num_docs):
        count = rng.randint(min_facts, max_facts)
        facts = _distractors(rng, _entities(rng, split, 2 * count), count)
        text = " ".join(f.sentence() for f in facts) + f"\n\n{RECALL_HEADER}"
        docs.append(
            {
                "text": text + " " + " ".join(f.sentence() for f in rng.sample(facts, len(facts))),
                "recall_from": len(text),
            }
        )
    return docs


def copy_document(
    rng: random.Random, vocab: list[int], min_length: int, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, answer mask) of one copy document for the induction warm-up of pretraining:
    a random sequence of `min_length`..`max_length` tokens from `vocab`, then the same sequence
    again; the second copy is the answer. Random tokens leave no n-gram shortcut: the model must
    attend back and copy. With one length it can find the token by position, which a toy model
    learns far sooner than the induction head that random lengths need (docs/adaptation.md)."""
    tokens = rng.choices(vocab, k=rng.randint(min_length, max_length))
    return tokens + tokens, [0] * len(tokens) + [1] * len(tokens)


def _repeat_sentences(rng: random.Random, sentences: list[str], keep: set[int], fraction: float) -> None:
    """Replace `fraction` of the filler sentences of the second half by copies of earlier filler."""
    half = len(sentences) // 2
    earlier = [i for i in range(half) if i not in keep]
    for i in range(half, len(sentences)):
        if earlier and i not in keep and rng.random() < fraction:
            sentences[i] = sentences[rng.choice(earlier)]


# ------------------------------------------------------------------------------------------
# The data stage: parquet files, generated in parallel shards
# ------------------------------------------------------------------------------------------
ROWS_PER_SHARD = 500


def _shard(job: tuple) -> list[dict]:
    kind, count, seed, kwargs = job
    if kind == "lm":
        return make_lm_texts(count, seed=seed, **kwargs)
    if kind == "drill":
        return make_drill_texts(count, seed=seed, **kwargs)
    return make_question_rows(count, seed=seed, **kwargs)


def generate(kind: str, num_rows: int, seed: int, workers: int | None = None, **kwargs) -> list[dict]:
    """`num_rows` rows in shards of ROWS_PER_SHARD, shard k seeded `seed * 1000 + k`: the same
    rows whatever the number of worker processes."""
    jobs = [
        (kind, min(ROWS_PER_SHARD, num_rows - start), seed * 1000 + k, kwargs)
        for k, start in enumerate(range(0, num_rows, ROWS_PER_SHARD))
    ]
    if workers == 0 or len(jobs) <= 1:
        shards = map(_shard, jobs)
        return [row for shard in shards for row in shard]
    with ProcessPoolExecutor(workers) as pool:
        return [row for shard in pool.map(_shard, jobs) for row in shard]


# name -> (kind, split, seed, short): short sets hold short_tokens-long documents for the
# start of pretraining, the others min_tokens..max_tokens.
DATASETS = {
    "train": ("qa", "train", 1, False),
    "train_short": ("qa", "train", 2, True),
    "lm_short": ("lm", "train", 3, True),
    "lm": ("lm", "train", 5, False),
    "eval": ("qa", "eval", 4, False),
    "eval_short": ("qa", "eval", 6, True),
    "drill": ("drill", "train", 7, True),  # held-out check during pretraining
    "eval_bins": ("eval_bins", "eval", 8, False),  # the multi-seed study's held-out set (make_eval_set)
}


EVAL_SET_STRIDE = 1000  # write_repro_data(eval_set=n): eval_bins drawn with seed 8 + 1000 * n


def write_repro_data(
    out_dir: str | Path,
    counts: dict[str, int],
    *,
    min_tokens: int = 2048,
    max_tokens: int = 16384,
    short_tokens: tuple[int, int] = (64, 256),
    workers: int | None = None,
    eval_length_bins: dict[str, tuple[int, int]] = LENGTH_BINS,
    eval_depth_bins: dict[str, tuple[float, float]] = DEPTH_BINS,
    eval_set: int = 0,
) -> dict[str, Path]:
    """Write out_dir/NAME.parquet with `counts[NAME]` rows for each NAME of DATASETS.

    train/eval: questions (eval: over the eval entities); lm: text; *_short: the same kinds,
    shorter; drill: look-up drills (make_drill_texts), no filler; eval_bins: make_eval_set over
    `eval_length_bins` x `eval_depth_bins` (its count a multiple of the number of cells), in
    range where a length bin lies within min_tokens..max_tokens; `eval_set` > 0 draws eval_bins'
    questions from other random streams (another question set, same bins and counts). Returns
    the paths.
    """
    unknown = sorted(set(counts) - set(DATASETS))
    if unknown:
        raise ValueError(f"counts: unknown dataset(s) {unknown}; known: {sorted(DATASETS)}")
    paths = {}
    for name, count in counts.items():
        kind, split, seed, short = DATASETS[name]
        low, high = short_tokens if short else (min_tokens, max_tokens)
        if kind == "eval_bins":
            cells = len(eval_length_bins) * len(eval_depth_bins)
            if count % cells:
                raise ValueError(f"counts[{name!r}]: {count} is not a multiple of the {cells} (length, depth) cells")
            rows = make_eval_set(
                count // cells,
                seed=seed + EVAL_SET_STRIDE * eval_set,
                length_bins=eval_length_bins,
                depth_bins=eval_depth_bins,
                train_range=(min_tokens, max_tokens),
                workers=workers,
                split=split,
            )
        else:
            rows = generate(kind, count, seed, workers, split=split, min_tokens=low, max_tokens=high)
        paths[name] = write_parquet(Path(out_dir) / f"{name}.parquet", rows)
    return paths
