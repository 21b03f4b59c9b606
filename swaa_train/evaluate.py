"""Long-context QA accuracy of a model under several SWAA settings in one run, scored as the SWAA
paper scores it.

Input: a parquet (or any file `data.load_rows` reads) in one of the layouts the paper evaluates on:
- LongMemEval style (LongMemEval_24k): `prompt` (or `context` + `question`), `question`, `answer`,
  usually `question_type`;
- LongBench-v2 style: `question`, the choices (`choices` as a list, or `choice_A` .. `choice_D`),
  `answer` (a letter), `context` or `prompt`; `domain` stands in for a missing `question_type`.
Each setting (SWAA config, with or without the adapter) generates a greedy answer per row. Only
the text after the last `</think>` is scored (a reasoning model that never closes its thinking
has no answer); an answer cut off at `max_new_tokens` is counted as truncated and never put to
the judge (the rule match still reads what it has).
Scores: the rule match (`is_correct`; for multiple choice the last "The correct answer is (X)"),
and with a judge model, its CORRECT/WRONG verdict on open answers as the reference's judge
gives it. Output in `out_dir`: samples.jsonl (one line per row and setting), results.json and
results.md (the table, then accuracy per question type and per prompt-length bin).
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
from contextlib import nullcontext
from pathlib import Path

from transformers.utils import logging

from .recipe import load_yaml
from .swaa_config import SWAAConfig

logger = logging.get_logger(__name__)

ARTICLES = re.compile(r"\b(a|an|the)\b")
CHOICE_LETTERS = "ABCD"
# The answer format LongBench-v2 prompts ask for; the last one in a response counts.
CORRECT_ANSWER_IS = re.compile(r"(?i:the correct answer is)\s*\(?([A-D])\b")
# Looser forms ("Answer: B", "the answer is (C)") when that sentence is missing.
CHOICE_PATTERN = re.compile(r"(?i:answer)(?: is)?\s*[:：]?\s*\(?([A-D])\b")
LEADING_CHOICE = re.compile(r"\s*\(?([A-D])[).:\s]")
THINK_END = "</think>"
THINK_START = "<think>"
# Prompt-length bins of the reference's report (tokens): 0-16k, 16-32k, 32-64k, 64-128k, 128k+.
LENGTH_BINS = (16_000, 32_000, 64_000, 128_000)
# Default generation lengths of the reference: room for a reasoning model's thinking.
MAX_NEW_TOKENS = 2000
MAX_NEW_TOKENS_THINKING = 10000


# ------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalisation)."""
    text = str(text).lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return " ".join(ARTICLES.sub(" ", text).split())


def final_answer(response: str, thinking: bool = False) -> str | None:
    """The part of a response that is scored: the text after the last `</think>`.

    None when the model never finished thinking: an opened `<think>` without its end, or, for a
    model whose chat template opens the thinking block itself (`thinking`), no `</think>` at all.
    """
    if THINK_END in response:
        return response.rsplit(THINK_END, 1)[1].strip()
    if thinking or THINK_START in response:
        return None
    return response.strip()


def _choice(response: str) -> str | None:
    response = response.replace("*", "")  # **The correct answer is (B)**
    stated = CORRECT_ANSWER_IS.findall(response)
    if stated:
        return stated[-1]
    found = CHOICE_PATTERN.search(response)
    if found:
        return found.group(1).upper()
    leading = LEADING_CHOICE.match(response + " ")  # "B. ...", "(C) ..."
    return leading.group(1) if leading else None


def is_correct(response: str, answer) -> bool:
    """True if the response contains a reference answer (whole words, after normalisation).

    `answer` is a string or a list of acceptable strings. A single letter A-D is a multiple
    choice answer and must be the choice the response names: the last "The correct answer is
    (X)" in it (the reference's rule), else a looser "Answer: X" or a leading "X." / "(X)".
    """
    answers = list(answer) if isinstance(answer, (list, tuple)) else [answer]
    normalized = f" {normalize_answer(response)} "
    for candidate in answers:
        candidate = str(candidate).strip()
        if len(candidate) == 1 and candidate.upper() in CHOICE_LETTERS:
            if _choice(response) == candidate.upper():
                return True
        elif normalize_answer(candidate) and f" {normalize_answer(candidate)} " in normalized:
            return True
    return False


# ------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class EvalSetting:
    name: str
    swaa: SWAAConfig
    adapter: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> EvalSetting:
        unknown = sorted(set(data) - {"name", "swaa", "adapter"})
        if unknown or "name" not in data:
            raise ValueError(f"setting {data!r}: needs 'name', may have 'swaa' and 'adapter'; unknown: {unknown}")
        return cls(str(data["name"]), SWAAConfig.from_dict(data.get("swaa") or {}), bool(data.get("adapter", False)))


def default_settings(trained: SWAAConfig | None, num_layers: int, has_adapter: bool) -> list[EvalSetting]:
    """The paper's ablation ladder: full attention, naive SWA, + sinks, + FA decode, + interleaving;
    each again with the adapter when there is one. Window, sinks and full-attention layers
    are the trained ones (every other layer if it trained none)."""
    if trained is None or trained.sliding_window_size is None:
        raise ValueError("sliding_window_size: the default settings need a window; pass --window or --settings")
    window, sinks = trained.sliding_window_size, trained.keep_first or 0
    interleaved = trained.non_sliding_layers or list(range(1, num_layers, 2))
    ladder = [
        ("full attention", SWAAConfig()),
        ("naive SWA", SWAAConfig(window)),
        ("SWA + sinks", SWAAConfig(window, sinks)),
        ("SWA + sinks + FA decode", SWAAConfig(window, sinks, True)),
        ("SWA + sinks + FA decode + interleaving", SWAAConfig(window, sinks, True, interleaved)),
    ]
    settings = [EvalSetting(name, swaa) for name, swaa in ladder]
    if has_adapter:
        settings += [EvalSetting(name, swaa, adapter=True) for name, swaa in ladder]
    return settings


def load_settings(path: str | Path) -> list[EvalSetting]:
    """Settings from a YAML/JSON list of {name, swaa: {...}, adapter: bool}."""
    data = load_yaml(Path(path).read_text())
    if not isinstance(data, list) or not data:
        raise ValueError(f"settings: {path} must hold a non-empty list of settings")
    return [EvalSetting.from_dict(item) for item in data]


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
CHOICE_COLUMNS = tuple(f"choice_{letter}" for letter in CHOICE_LETTERS)
CHOICE_PROMPT = (
    "Read the text below, then answer the multiple-choice question after it.\n\n<text>\n{context}\n</text>\n\n"
    "Question: {question}\nChoices:\n{choices}\n\n"
    'Reply in the form "The correct answer is (X)", where X is the letter of the right choice.'
)


def _choices(row: dict, index: int) -> list[str] | None:
    if row.get("choices") is not None:
        choices = list(row["choices"])
    elif all(row.get(c) is not None for c in CHOICE_COLUMNS):
        choices = [row[c] for c in CHOICE_COLUMNS]
    else:
        return None
    if not 2 <= len(choices) <= len(CHOICE_LETTERS):
        raise ValueError(f"row {index}: choices must hold 2 to {len(CHOICE_LETTERS)} options, got {len(choices)}")
    return [str(c) for c in choices]


def eval_row(row: dict, index: int) -> dict:
    """One row in the common layout: prompt, question, answer, question_type, choices.

    A multiple-choice row's answer becomes its letter (an index 0..3 is accepted too); a row
    without `prompt` gets one from its context, question and choices.
    """
    choices = _choices(row, index)
    answer = row["answer"]
    if choices is not None and isinstance(answer, int) and not isinstance(answer, bool):
        answer = CHOICE_LETTERS[answer]
    if choices is not None and not (isinstance(answer, str) and answer.strip().upper() in CHOICE_LETTERS):
        raise ValueError(f"row {index}: a multiple-choice answer must be a letter A-D, got {answer!r}")
    prompt = row.get("prompt")
    if prompt is None and choices is not None:
        listed = "\n".join(f"({letter}) {text}" for letter, text in zip(CHOICE_LETTERS, choices))
        prompt = CHOICE_PROMPT.format(context=row["context"], question=row["question"], choices=listed)
    elif prompt is None:
        prompt = f"Context: {row['context']}\n\nQuestion: {row['question']}"
    question_type = row.get("question_type", row.get("domain"))
    return {
        **row,
        "prompt": prompt,
        "question": row.get("question"),
        "answer": answer.strip().upper() if choices is not None else answer,
        "question_type": None if question_type is None else str(question_type),
        "choices": choices,
    }


def load_eval_rows(path: str | Path, limit: int | None = None, split: str = "train") -> list[dict]:
    """LongMemEval- or LongBench-v2-style rows (see the module doc) in the layout of `eval_row`."""
    from .data import load_rows

    rows = load_rows(path, split=split)
    columns = set(rows.column_names)
    if "prompt" not in columns and not {"context", "question"} <= columns:
        raise ValueError(f"{path}: needs a 'prompt' column (or 'context' and 'question'); has {sorted(columns)}")
    if "answer" not in columns:
        raise ValueError(f"{path}: needs an 'answer' column; has {sorted(columns)}")
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return [eval_row(row, i) for i, row in enumerate(rows)]


def length_bin(tokens: int, bins: tuple[int, ...] = LENGTH_BINS) -> str:
    """The label of the prompt-length bin of `tokens` ("0-16k", ..., "128k+"), bins closed on the left."""
    edges = (0, *bins)
    for low, high in zip(edges, edges[1:]):
        if tokens < high:
            return f"{_k(low)}-{_k(high)}"
    return f"{_k(edges[-1])}+"


def _k(tokens: int) -> str:
    return f"{tokens // 1000}k" if tokens % 1000 == 0 and tokens else str(tokens)


# ------------------------------------------------------------------------------------------
# Generating and judging
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Response:
    text: str
    truncated: bool  # stopped by max_new_tokens before an end-of-sequence token
    new_tokens: int


def opens_thinking(tokenizer) -> bool:
    """True for a reasoning model whose chat template opens the `<think>` block in the prompt
    (Qwen3-*-Thinking-2507): its answers carry `</think>` but not `<think>`."""
    from .inference import format_prompt

    return format_prompt(tokenizer, "?").rstrip().endswith(THINK_START)


def default_max_new_tokens(tokenizer) -> int:
    """The reference's generation lengths: 10000 new tokens for a thinking model, else 2000."""
    return MAX_NEW_TOKENS_THINKING if opens_thinking(tokenizer) else MAX_NEW_TOKENS


def _stop_ids(model, tokenizer) -> set[int]:
    ids = set()
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        ids.update([value] if isinstance(value, int) else value or [])
    return ids


def prompt_token_counts(tokenizer, prompts: list[str]) -> list[int]:
    """Tokens of each prompt as generation feeds it (one user turn of the chat template)."""
    from .inference import format_prompt

    return [len(tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]) for p in prompts]


def generate_responses(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 4,
    progress: bool = False,
    desc: str = "generate",
    return_memory: bool = False,
    **generate_kwargs,
) -> list[Response] | tuple[list[Response], dict | None]:
    """Greedy responses to `prompts` under the model's SWAA settings, each with whether
    `max_new_tokens` cut it off (batched shortest first, returned in input order)."""
    from .inference import format_prompt, generate_in_batches

    texts = [format_prompt(tokenizer, p) for p in prompts]
    new_ids, largest = generate_in_batches(
        model, tokenizer, texts, max_new_tokens, batch_size, progress, desc, **generate_kwargs
    )
    stop = _stop_ids(model, tokenizer)
    responses = []
    for ids in new_ids:
        end = next((k for k, token in enumerate(ids) if token in stop), None)
        kept = ids if end is None else ids[:end]
        text = tokenizer.decode(kept, skip_special_tokens=True).strip()
        responses.append(Response(text, truncated=end is None and len(ids) >= max_new_tokens, new_tokens=len(kept)))
    return (responses, largest) if return_memory else responses


JUDGE_PROMPT = """Label a generated answer to a question CORRECT or WRONG, given the gold (reference) answer.

The question asks about something in a long text or an earlier conversation. The gold answer is
short; the generated answer may be much longer. Grade generously: if the generated answer states
the same key fact as the gold answer, it is CORRECT. A date or time is the same if it names the
same day or period, in whatever format or relative wording. An answer that is vague or does not
commit to the fact is WRONG. If the gold answer lists alternatives joined by "or", matching any
one of them is CORRECT.

Question: {question}
Gold answer: {answer}
Generated answer: {response}

Give a one-sentence reason, then end with the single word CORRECT or WRONG."""
VERDICT = re.compile(r"\b(CORRECT|WRONG)\b", re.IGNORECASE)


def verdict(judge_reply: str) -> int | None:
    """1 for CORRECT, 0 for WRONG: the judge's last such word (after its thinking); None if it gave none."""
    text = final_answer(judge_reply)
    found = VERDICT.findall(text or "")
    return None if not found else int(found[-1].upper() == "CORRECT")


def judge_records(judge, tokenizer, records: list[dict], max_new_tokens: int = 512, batch_size: int = 4) -> None:
    """Ask the judge model about each open, answered, untruncated record; set record["judge"] (1/0).

    Multiple-choice records keep their rule score (as the reference scores LongBench-v2);
    truncated or unfinished answers are never judged (`judged` False): judge 0.
    """
    asked = [r for r in records if r["judged"] and r["choices"] is None]
    prompts = [
        JUDGE_PROMPT.format(question=r["question"], answer=r["answer"], response=r["answer_text"]) for r in asked
    ]
    replies = generate_responses(judge, tokenizer, prompts, max_new_tokens, batch_size, progress=True, desc="judge")
    for record in records:
        record["judge"] = int(record["correct"]) if record["judged"] else 0
    for record, reply in zip(asked, replies):
        record["judge_reply"] = reply.text
        record["judge"] = verdict(reply.text) or 0


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------
def evaluate_setting(
    model, tokenizer, rows: list[dict], setting: EvalSetting, thinking: bool = False, **generate_kwargs
) -> tuple[list[dict], dict | None]:
    """Per-row records of one setting (the response and whether it is correct) and its KV memory report."""
    from .inference import set_swaa

    set_swaa(model, setting.swaa)
    peft = hasattr(model, "disable_adapter")
    if setting.adapter and not peft:
        raise ValueError(f"setting {setting.name!r}: adapter=True but no adapter is loaded")
    with model.disable_adapter() if peft and not setting.adapter else nullcontext():
        responses, memory = generate_responses(
            model, tokenizer, [r["prompt"] for r in rows], desc=_label(setting), return_memory=True, **generate_kwargs
        )
    records = []
    for i, (row, response) in enumerate(zip(rows, responses)):
        answer_text = final_answer(response.text, thinking)
        records.append(
            {
                "setting": _label(setting),
                "index": i,
                "question": row.get("question") or row["prompt"][-500:],  # what the judge is told was asked
                "question_type": row.get("question_type"),
                "choices": row.get("choices"),
                "answer": row["answer"],
                "prompt_tokens": row.get("prompt_tokens"),
                "response": response.text,
                "answer_text": answer_text,
                "new_tokens": response.new_tokens,
                "truncated": response.truncated,
                "judged": answer_text is not None and not response.truncated,
                "correct": answer_text is not None and is_correct(answer_text, row["answer"]),
            }
        )
    return records, memory


def _is_reference(setting: EvalSetting) -> bool:
    return setting.swaa.sliding_window_size is None and not setting.adapter


def _label(setting: EvalSetting) -> str:
    return setting.name + (" + adapter" if setting.adapter else "")


def _accuracy(records: list[dict], key: str) -> dict:
    correct = sum(int(r[key]) for r in records)
    return {"correct": correct, "total": len(records), "accuracy": correct / len(records) if records else 0.0}


def breakdown(records: list[dict], key: str, group, order=None) -> dict[str, dict]:
    """Accuracy (by `key`: "correct" or "judge") per group of records, `group(record)` naming it."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(group(record), []).append(record)
    names = order if order is not None else sorted(groups)
    return {name: _accuracy(groups[name], key) for name in names if name in groups}


def summarize(
    setting: EvalSetting,
    records: list[dict],
    memory: dict | None,
    reference: list[dict] | None,
    length_bins: tuple[int, ...] = LENGTH_BINS,
) -> dict:
    """Accuracy of one setting; `same_as_reference`: the share of responses identical to those of
    the reference setting (full attention without adapter), which shows what a setting
    changes even where accuracy cannot (an untrained demo model). With a judge, `judge_*` is
    its score; the per question type and per prompt-length bin accuracies use the judge's
    score where there is one, else the rule's."""
    correct = sum(r["correct"] for r in records)
    same = [r["response"] == ref["response"] for r, ref in zip(records, reference)] if reference else []
    full_bytes = memory["full_cache_bytes"] if memory else 0
    judged = bool(records) and all("judge" in r for r in records)
    key = "judge" if judged else "correct"
    bins = [length_bin(t, length_bins) for t in (0, *length_bins)]
    summary = {
        "setting": _label(setting),
        "adapter": setting.adapter,
        "swaa": setting.swaa.to_dict(),
        "describe": setting.swaa.describe(),
        "correct": correct,
        "total": len(records),
        "accuracy": correct / len(records) if records else 0.0,
        "truncated": sum(r["truncated"] for r in records),
        "same_as_reference": sum(same) / len(same) if same else None,
        "kv_cache_saved": memory["saved_bytes"] / full_bytes if full_bytes else 0.0,
        "by_question_type": breakdown(
            [r for r in records if r["question_type"] is not None], key, lambda r: r["question_type"]
        ),
        "by_prompt_length": breakdown(
            [r for r in records if r["prompt_tokens"] is not None],
            key,
            lambda r: length_bin(r["prompt_tokens"], length_bins),
            order=bins,
        ),
    }
    if judged:
        summary.update({f"judge_{k}": v for k, v in _accuracy(records, "judge").items()})
    return summary


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _breakdown_table(summary: list[dict], field: str, title: str) -> list[str]:
    groups = list(dict.fromkeys(name for row in summary for name in row.get(field, {})))
    if not groups:
        return []
    lines = ["", f"### {title}", "", "| setting | " + " | ".join(groups) + " |", "| --- |" + " --- |" * len(groups)]
    for row in summary:
        cells = []
        for name in groups:
            cell = row.get(field, {}).get(name)
            cells.append("-" if cell is None else f"{_percent(cell['accuracy'])} ({cell['correct']}/{cell['total']})")
        lines.append(f"| {row['setting']} | " + " | ".join(cells) + " |")
    return lines


def format_table(summary: list[dict]) -> str:
    judged = any("judge_accuracy" in row for row in summary)
    lines = [
        "| setting | adapter | attention | accuracy | correct | same as full attention | KV cache saved | truncated |"
        + (" judge accuracy |" if judged else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if judged else ""),
    ]
    for row in summary:
        lines.append(
            f"| {row['setting']} | {'yes' if row['adapter'] else 'no'} | {row['describe']} | "
            f"{_percent(row['accuracy'])} | {row['correct']}/{row['total']} | "
            f"{_percent(row['same_as_reference'])} | {_percent(row['kv_cache_saved'])} | "
            f"{row.get('truncated', 0)}/{row['total']} |"
            + (f" {_percent(row.get('judge_accuracy'))} |" if judged else "")
        )
    score = "judge" if judged else "rule match"
    lines += _breakdown_table(summary, "by_question_type", f"Accuracy by question type ({score})")
    lines += _breakdown_table(summary, "by_prompt_length", f"Accuracy by prompt length in tokens ({score})")
    return "\n".join(lines)


def select_rows(rows: list[dict], tokenizer, max_prompt_tokens: int | None, limit: int | None) -> list[dict]:
    """Count each row's prompt tokens; keep rows within `max_prompt_tokens`, then the first `limit`."""
    for row, tokens in zip(rows, prompt_token_counts(tokenizer, [r["prompt"] for r in rows])):
        row["prompt_tokens"] = tokens
    kept = [r for r in rows if max_prompt_tokens is None or r["prompt_tokens"] <= max_prompt_tokens]
    if len(kept) < len(rows):
        logger.warning(
            "%d of %d rows have more than %d prompt tokens: left out",
            len(rows) - len(kept),
            len(rows),
            max_prompt_tokens,
        )
    if not kept:
        raise ValueError(f"max_prompt_tokens={max_prompt_tokens}: no row's prompt is that short")
    return kept[:limit] if limit is not None else kept


def run_evaluation(
    model: str,
    data: str,
    out_dir: str,
    adapter: str | None = None,
    settings: list[EvalSetting] | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 4,
    dtype: str = "auto",
    device: str | None = None,
    judge_model: str | None = None,
    judge_max_new_tokens: int = 512,
    max_prompt_tokens: int | None = None,
    length_bins: tuple[int, ...] = LENGTH_BINS,
) -> list[dict]:
    """Evaluate every setting on the rows of `data`; write samples.jsonl, results.json, results.md.

    `max_new_tokens` None: the reference's lengths (`default_max_new_tokens`). `max_prompt_tokens`
    leaves out longer prompts before `limit` takes the first rows. `judge_model` (a local or Hub
    model, run with full attention after all settings) adds its CORRECT/WRONG score.
    """
    from .inference import load_swaa_model, swaa_of

    rows = load_eval_rows(data)
    loaded, tokenizer = load_swaa_model(model, adapter=adapter, dtype=dtype, device=device)
    rows = select_rows(rows, tokenizer, max_prompt_tokens, limit)
    thinking = opens_thinking(tokenizer)
    max_new_tokens = max_new_tokens or default_max_new_tokens(tokenizer)
    if settings is None:
        num_layers = loaded.config.get_text_config().num_hidden_layers
        settings = default_settings(swaa_of(loaded), num_layers, has_adapter=hasattr(loaded, "disable_adapter"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs, reference = [], None
    with open(out / "samples.jsonl", "w") as samples:  # written as it goes: a crash keeps what was done
        for setting in sorted(settings, key=lambda s: not _is_reference(s)):  # the reference runs first
            records, memory = evaluate_setting(
                loaded,
                tokenizer,
                rows,
                setting,
                thinking=thinking,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                progress=True,
            )
            if reference is None and _is_reference(setting):
                reference = records
            runs.append((setting, records, memory))
            samples.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            samples.flush()
            logger.info("%s: accuracy %.1f%%", _label(setting), 100 * _accuracy(records, "correct")["accuracy"])
    if judge_model is not None:
        del loaded  # the judge takes its place in memory
        judge, judge_tokenizer = load_swaa_model(judge_model, swaa=SWAAConfig(), dtype=dtype, device=device)
        judge_records(
            judge, judge_tokenizer, [r for _, records, _ in runs for r in records], judge_max_new_tokens, batch_size
        )
        with open(out / "samples.jsonl", "w") as samples:  # again, with the verdicts
            for _, records, _ in runs:
                samples.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    summary = [summarize(setting, records, memory, reference, length_bins) for setting, records, memory in runs]
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "results.md").write_text(format_table(summary) + "\n")
    return summary
