"""Self-distillation data: the original full-attention model answers fusang_long prompts, each
answer is judged against the reference, and the rows are written as the prompt / response /
judge parquet that the trainer's data loader reads (`judge_filter` keeps judge == 1).

Training on the model's own (correct) answers keeps SWAA fine-tuning close to the original
model's distribution (SWAA paper, self-distillation). The judge is the rule-based answer
match of `evaluate.is_correct` on the text after `</think>`, or a judge model asked CORRECT/WRONG when
one is given. Generation lengths default to the reference's (`evaluate.default_max_new_tokens`:
room for a reasoning model's thinking); a response cut off at `max_new_tokens` is never judged
(judge 0, column `truncated`) and counted, so no unfinished answer becomes training data.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from transformers.utils import logging

from .evaluate import (
    default_max_new_tokens,
    final_answer,
    generate_responses,
    is_correct,
    load_eval_rows,
    opens_thinking,
)
from .swaa_config import SWAAConfig

logger = logging.get_logger(__name__)


def judge_with_model(
    judge, tokenizer, rows: list[dict], responses: list[str], batch_size: int = 4, max_new_tokens: int = 512
) -> list[int]:
    """1 where the judge model labels the response CORRECT, else 0: the evaluation's judge
    (`evaluate.JUDGE_PROMPT`, the SWAA reference's CORRECT/WRONG question)."""
    from .evaluate import JUDGE_PROMPT, verdict
    from .inference import generate

    prompts = [
        JUDGE_PROMPT.format(question=row.get("question") or row["prompt"][-500:], answer=row["answer"], response=resp)
        for row, resp in zip(rows, responses)
    ]
    replies = generate(
        judge, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=True, desc="judge"
    )
    return [verdict(reply) or 0 for reply in replies]


def _write_parquet_atomic(rows: list[dict], out_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_self_distill(
    model: str,
    data: str,
    out_path: str,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 4,
    judge_model: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
) -> dict:
    """Write the distilled parquet to `out_path`; return counts (rows, judged correct, truncated)."""
    from .inference import load_swaa_model

    rows = load_eval_rows(data, limit)
    # The teacher is the original model as pretrained: full attention, no adapter.
    teacher, tokenizer = load_swaa_model(model, swaa=SWAAConfig(), dtype=dtype, device=device)
    thinking = opens_thinking(tokenizer)
    generated = generate_responses(
        teacher,
        tokenizer,
        [r["prompt"] for r in rows],
        max_new_tokens=max_new_tokens or default_max_new_tokens(tokenizer),
        batch_size=batch_size,
        progress=True,
        desc="distill",
    )
    responses = [g.text for g in generated]
    # Only a finished answer is judged: truncated or still thinking is judge 0.
    answers = [None if g.truncated else final_answer(g.text, thinking) for g in generated]
    rule = [int(a is not None and is_correct(a, row["answer"])) for row, a in zip(rows, answers)]
    judge = rule
    if judge_model is not None:
        del teacher
        judge_llm, judge_tokenizer = load_swaa_model(judge_model, swaa=SWAAConfig(), dtype=dtype, device=device)
        finished = [i for i, a in enumerate(answers) if a is not None]
        verdicts = judge_with_model(
            judge_llm, judge_tokenizer, [rows[i] for i in finished], [answers[i] for i in finished], batch_size
        )
        judge = [0] * len(rows)
        for i, v in zip(finished, verdicts):
            judge[i] = v
    # Keys load_eval_rows adds: a column only where some row has a value.
    empty = {k for k in ("question_type", "choices") if all(row.get(k) is None for row in rows)}
    out_rows = [
        {
            **{k: v for k, v in row.items() if k not in empty},
            "response": resp,
            "judge": j,
            "judge_rule": r,
            "truncated": g.truncated,
        }
        for row, resp, j, r, g in zip(rows, responses, judge, rule, generated)
    ]
    _write_parquet_atomic(out_rows, Path(out_path))
    truncated = sum(g.truncated for g in generated)
    stats = {"rows": len(out_rows), "judged_correct": sum(judge), "truncated": truncated, "out_path": str(out_path)}
    logger.info(
        "Self-distillation: %d of %d responses judged correct, %d cut off at max_new_tokens -> %s",
        sum(judge),
        len(out_rows),
        truncated,
        out_path,
    )
    return stats
