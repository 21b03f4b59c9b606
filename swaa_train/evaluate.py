"""Long-context QA accuracy of a model under several SWAA settings in one run.

Input: a parquet (or any file `data.load_rows` reads) with `prompt` and `answer` columns and
usually `question` (the LongMemEval_24k / LongBench-v2 layout the SWAA paper evaluates on;
rows with `context` + `question` instead of `prompt` are joined as the reference code does).
Each setting (SWAA config, with or without the adapter) generates a greedy answer per row,
scored by normalised answer match. Output in `out_dir`: samples.jsonl (one line per row and
setting), results.json and results.md (the table).
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
# "The correct answer is (B)", "Answer: B" -- how LongBench-v2 style responses name a choice.
CHOICE_PATTERN = re.compile(r"(?i:answer)(?: is)?\s*[:：]?\s*\(?([A-D])\b")
LEADING_CHOICE = re.compile(r"\s*\(?([A-D])[).:\s]")


# ------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalisation)."""
    text = str(text).lower()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return " ".join(ARTICLES.sub(" ", text).split())


def _choice(response: str) -> str | None:
    found = CHOICE_PATTERN.search(response)
    if found:
        return found.group(1).upper()
    leading = LEADING_CHOICE.match(response + " ")  # "B. ...", "(C) ..."
    return leading.group(1) if leading else None


def is_correct(response: str, answer) -> bool:
    """True if the response contains a reference answer (whole words, after normalisation).

    `answer` is a string or a list of acceptable strings. A single letter A-D is a multiple
    choice answer and must be the choice the response names.
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
def load_eval_rows(path: str | Path, limit: int | None = None, split: str = "train") -> list[dict]:
    from .data import load_rows

    rows = load_rows(path, split=split)
    columns = set(rows.column_names)
    if "prompt" not in columns and not {"context", "question"} <= columns:
        raise ValueError(f"{path}: needs a 'prompt' column (or 'context' and 'question'); has {sorted(columns)}")
    if "answer" not in columns:
        raise ValueError(f"{path}: needs an 'answer' column; has {sorted(columns)}")
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    out = []
    for row in rows:
        if "prompt" not in columns:
            row["prompt"] = f"Context: {row['context']}\n\nQuestion: {row['question']}"
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------
def evaluate_setting(
    model, tokenizer, rows: list[dict], setting: EvalSetting, **generate_kwargs
) -> tuple[list[dict], dict | None]:
    """Per-row records of one setting (the response and whether it is correct) and its KV memory report."""
    from .inference import generate, set_swaa

    set_swaa(model, setting.swaa)
    peft = hasattr(model, "disable_adapter")
    if setting.adapter and not peft:
        raise ValueError(f"setting {setting.name!r}: adapter=True but no adapter is loaded")
    with model.disable_adapter() if peft and not setting.adapter else nullcontext():
        responses, memory = generate(
            model, tokenizer, [r["prompt"] for r in rows], desc=_label(setting), return_memory=True, **generate_kwargs
        )
    records = [
        {
            "setting": _label(setting),
            "index": i,
            "question": row.get("question"),
            "answer": row["answer"],
            "response": response,
            "correct": is_correct(response, row["answer"]),
        }
        for i, (row, response) in enumerate(zip(rows, responses))
    ]
    return records, memory


def _is_reference(setting: EvalSetting) -> bool:
    return setting.swaa.sliding_window_size is None and not setting.adapter


def _label(setting: EvalSetting) -> str:
    return setting.name + (" + adapter" if setting.adapter else "")


def summarize(setting: EvalSetting, records: list[dict], memory: dict | None, reference: list[dict] | None) -> dict:
    """Accuracy of one setting; `same_as_reference`: the share of responses identical to those of
    the reference setting (full attention without adapter), which shows what a setting
    changes even where accuracy cannot (an untrained demo model)."""
    correct = sum(r["correct"] for r in records)
    same = [r["response"] == ref["response"] for r, ref in zip(records, reference)] if reference else []
    full_bytes = memory["full_cache_bytes"] if memory else 0
    return {
        "setting": _label(setting),
        "adapter": setting.adapter,
        "swaa": setting.swaa.to_dict(),
        "describe": setting.swaa.describe(),
        "correct": correct,
        "total": len(records),
        "accuracy": correct / len(records) if records else 0.0,
        "same_as_reference": sum(same) / len(same) if same else None,
        "kv_cache_saved": memory["saved_bytes"] / full_bytes if full_bytes else 0.0,
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_table(summary: list[dict]) -> str:
    lines = [
        "| setting | adapter | attention | accuracy | correct | same as full attention | KV cache saved |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in summary:
        lines.append(
            f"| {row['setting']} | {'yes' if row['adapter'] else 'no'} | {row['describe']} | "
            f"{_percent(row['accuracy'])} | {row['correct']}/{row['total']} | "
            f"{_percent(row['same_as_reference'])} | {_percent(row['kv_cache_saved'])} |"
        )
    return "\n".join(lines)


def run_evaluation(
    model: str,
    data: str,
    out_dir: str,
    adapter: str | None = None,
    settings: list[EvalSetting] | None = None,
    limit: int | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 4,
    dtype: str = "auto",
    device: str | None = None,
) -> list[dict]:
    """Evaluate every setting on the rows of `data`; write samples.jsonl, results.json, results.md."""
    from .inference import load_swaa_model, swaa_of

    rows = load_eval_rows(data, limit)
    loaded, tokenizer = load_swaa_model(model, adapter=adapter, dtype=dtype, device=device)
    if settings is None:
        num_layers = loaded.config.get_text_config().num_hidden_layers
        settings = default_settings(swaa_of(loaded), num_layers, has_adapter=hasattr(loaded, "disable_adapter"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, reference = [], None
    with open(out / "samples.jsonl", "w") as samples:
        for setting in sorted(settings, key=lambda s: not _is_reference(s)):  # the reference runs first
            records, memory = evaluate_setting(
                loaded, tokenizer, rows, setting, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=True
            )
            if reference is None and _is_reference(setting):
                reference = records
            samples.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            samples.flush()
            summary.append(summarize(setting, records, memory, reference))
            logger.info("%s: accuracy %.1f%%", summary[-1]["setting"], 100 * summary[-1]["accuracy"])
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "results.md").write_text(format_table(summary) + "\n")
    return summary
