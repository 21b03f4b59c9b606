"""Self-distillation data: the original full-attention model answers fusang_long prompts, each
answer is judged against the reference, and the rows are written as the prompt / response /
judge parquet that the trainer's data loader reads (`judge_filter` keeps judge == 1).

Training on the model's own (correct) answers keeps SWAA fine-tuning close to the original
model's distribution (SWAA paper, self-distillation). The judge is the rule-based answer
match of `evaluate.is_correct`, or a judge model asked yes/no when one is given.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from transformers.utils import logging

from .evaluate import is_correct, load_eval_rows, normalize_answer
from .swaa_config import SWAAConfig

logger = logging.get_logger(__name__)

JUDGE_PROMPT = (
    "Decide whether a response answers a question correctly, given the reference answer.\n\n"
    "Question: {question}\nReference answer: {answer}\nResponse: {response}\n\n"
    "Is the response correct? Answer yes or no."
)


def judge_with_model(judge, tokenizer, rows: list[dict], responses: list[str], batch_size: int = 4) -> list[int]:
    """1 where the judge model's reply starts with "yes", else 0."""
    from .inference import generate

    prompts = [
        JUDGE_PROMPT.format(question=row.get("question") or row["prompt"][-500:], answer=row["answer"], response=resp)
        for row, resp in zip(rows, responses)
    ]
    verdicts = generate(judge, tokenizer, prompts, max_new_tokens=4, batch_size=batch_size, progress=True, desc="judge")
    return [int(normalize_answer(v).startswith("yes")) for v in verdicts]


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
    max_new_tokens: int = 256,
    batch_size: int = 4,
    judge_model: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
) -> dict:
    """Write the distilled parquet to `out_path`; return counts (rows, judged correct)."""
    from .inference import generate, load_swaa_model

    rows = load_eval_rows(data, limit)
    # The teacher is the original model as pretrained: full attention, no adapter.
    teacher, tokenizer = load_swaa_model(model, swaa=SWAAConfig(), dtype=dtype, device=device)
    responses = generate(
        teacher,
        tokenizer,
        [r["prompt"] for r in rows],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=True,
        desc="distill",
    )
    rule = [int(is_correct(resp, row["answer"])) for row, resp in zip(rows, responses)]
    judge = rule
    if judge_model is not None:
        del teacher
        judge_llm, judge_tokenizer = load_swaa_model(judge_model, swaa=SWAAConfig(), dtype=dtype, device=device)
        judge = judge_with_model(judge_llm, judge_tokenizer, rows, responses, batch_size)
    out_rows = [
        {**row, "response": resp, "judge": j, "judge_rule": r} for row, resp, j, r in zip(rows, responses, judge, rule)
    ]
    _write_parquet_atomic(out_rows, Path(out_path))
    stats = {"rows": len(out_rows), "judged_correct": sum(judge), "out_path": str(out_path)}
    logger.info("Self-distillation: %d of %d responses judged correct -> %s", sum(judge), len(out_rows), out_path)
    return stats
