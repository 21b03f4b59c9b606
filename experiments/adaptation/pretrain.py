"""Pretrain a small Qwen3-architecture model from scratch with FULL attention, for the
adaptation experiment (experiments/adaptation/): the full-attention model that SWAA then adapts.

A plain PyTorch loop, because nothing here is LoRA or SFT: every step is one padding-free
packed row of whole documents (each keeps its own positions and attention, through the
"swaa" attention with `sliding_window_size` null and `cu_seq_lens`), bf16 autocast over
fp32 weights, AdamW. Documents are question rows (the chat template of data.py; the answer
tokens get their own loss term, so a handful of answer tokens per row are not drowned by
thousands of passage tokens) and language-model text (next-token loss on every token).

Induction warm-up: the first `copy_warmup_steps` steps, and then one step in `copy_every`,
pack random-token copy documents instead (a random sequence shown twice, the loss on the second
copy: data.copy_document). Copying a span seen before is what every look-up ends with,
and the synthetic text lets a model lower its loss for a long time without learning it; with
the warm-up, a toy model on CPU gave its first exact held-out answers (docs/adaptation.md,
"CPU study").

Length curriculum: the first `short_fraction` of the run packs short questions and look-up
drills (facts with no filler, then all restated: data.make_drill_texts), the rest the
long questions and text. On CPU, without the drills (short filler text instead) a toy model
never left the copy-the-question plateau; with drills of 1-8 facts it starts to look values
up (docs/adaptation.md, "CPU study"). With `eval_every`, the log also holds the teacher-forced
exact-answer share on held-out short questions (eval_short.parquet): the signal to watch. The run stops
at `max_steps` or after `time_budget_s` of wall-clock time, whichever comes first; the
learning-rate schedule follows whichever of the two is further along, or the steps alone
(`schedule: steps`, the multi-seed study's setting: a seed then names one base).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    Qwen3Config,
)
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
from transformers.utils import logging

from experiments.adaptation.data import copy_document
from swaa_train.attention import (
    ATTN_IMPLEMENTATION,
    apply_swaa,
    register_swaa_attention,
    swaa_attention_forward,
)
from swaa_train.data import encode_single_turn
from swaa_train.swaa_config import SWAAConfig

logger = logging.get_logger(__name__)


@dataclass
class PretrainArgs:
    data_dir: str = field(metadata={"help": "Directory of the data stage ({train,lm}{_short,}.parquet)."})
    out_dir: str = field(metadata={"help": "Where the model, tokenizer and pretrain_log.jsonl are written."})
    tokenizer: str = field(default="swaa_train/assets/tiny-qwen3", metadata={"help": "Tokenizer directory."})
    hidden_size: int = field(default=512, metadata={"help": "Model width."})
    num_layers: int = field(default=8, metadata={"help": "Decoder layers."})
    num_heads: int = field(default=8, metadata={"help": "Query heads (head_dim 64)."})
    num_kv_heads: int = field(default=2, metadata={"help": "Key/value heads (GQA)."})
    intermediate_size: int = field(default=1536, metadata={"help": "MLP width."})
    rope_theta: float = field(default=100000.0, metadata={"help": "RoPE base."})
    tie_embeddings: bool = field(default=False, metadata={"help": "Tie the input embedding and the LM head."})
    tokens_per_step: int = field(default=32768, metadata={"help": "Tokens in one packed row (one step)."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps."})
    max_steps: int = field(default=100000, metadata={"help": "Stop after this many steps..."})
    time_budget_s: float = field(default=240.0, metadata={"help": "...or after this many seconds."})
    schedule: str = field(
        default="steps_or_time",
        metadata={
            "help": "What the learning-rate schedule and the curriculum follow: steps_or_time (whichever of "
            "max_steps and time_budget_s is further along: a run on a clock) or steps (max_steps only; the time "
            "budget only stops the run, which then saves no base and raises). Only steps makes a seed's base "
            "independent of how fast the steps ran: the first steps of a run are slow, and under steps_or_time "
            "their learning rate follows the clock."
        },
    )
    short_fraction: float = field(default=0.5, metadata={"help": "Share of the run on short questions."})
    copy_warmup_steps: int = field(
        default=200,
        metadata={"help": "Induction warm-up: the first steps train on random-token copy documents only (0: none)."},
    )
    copy_every: int = field(
        default=4, metadata={"help": "After the warm-up, one step in this many is a copy step (0: none)."}
    )
    copy_min_length: int = field(default=24, metadata={"help": "Shortest random sequence of a copy document."})
    copy_max_length: int = field(
        default=24,
        metadata={
            "help": "Longest random sequence of a copy document (shown twice; the loss is on the second copy). One "
            "length lets the model copy by position, learnt in ~100 toy steps on CPU; random lengths (a true "
            "induction head) were not learnt in 600 (docs/adaptation.md)."
        },
    )
    lm_weight: float = field(default=0.5, metadata={"help": "Weight of the next-token loss beside the answer loss."})
    num_workers: int = field(default=8, metadata={"help": "Tokenizing data-loader processes (0: in-process)."})
    log_every: int = field(default=25, metadata={"help": "Steps between log lines."})
    eval_every: int = field(
        default=100, metadata={"help": "Steps between held-out checks (eval_short.parquet; 0: none)."}
    )
    eval_rows: int = field(default=100, metadata={"help": "Held-out questions per check."})
    seed: int = field(default=0, metadata={"help": "Seed of the weights and of the document order."})
    deterministic: bool = field(
        default=True,
        metadata={
            "help": "Deterministic algorithms while pretraining (torch.use_deterministic_algorithms, warn-only; the "
            "attention backward then leaves out its atomic dQ): one seed, one base on the same GPU and software. "
            "Without it two runs of a seed drifted apart from step 25 and ended at 93% and 22% (docs/adaptation.md)."
        },
    )
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda if available)."})

    def __post_init__(self):
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads must divide hidden_size and num_kv_heads num_heads: {self}")
        if self.schedule not in ("steps_or_time", "steps"):
            raise ValueError(f"schedule must be steps_or_time or steps, got {self.schedule!r}")
        if not 0.0 <= self.short_fraction < 1.0:
            raise ValueError(f"short_fraction must be in [0, 1), got {self.short_fraction}")
        if min(self.copy_warmup_steps, self.copy_every) < 0 or not 1 <= self.copy_min_length <= self.copy_max_length:
            raise ValueError(
                f"need copy_warmup_steps, copy_every >= 0 and 1 <= copy_min_length <= copy_max_length: {self}"
            )

    def is_copy_step(self, step: int) -> bool:
        """Step `step` (from 0) trains on copy documents: the warm-up, then one step in `copy_every`."""
        after = step - self.copy_warmup_steps
        return after < 0 or (self.copy_every > 0 and after % self.copy_every == self.copy_every - 1)


def model_config(args: PretrainArgs, tokenizer) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        head_dim=args.hidden_size // args.num_heads,
        max_position_embeddings=32768,
        rope_theta=args.rope_theta,
        tie_word_embeddings=args.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


# ------------------------------------------------------------------------------------------
# Data: packed rows of whole documents
# ------------------------------------------------------------------------------------------
def encode_document(doc: dict, tokenizer) -> tuple[list[int], list[int]]:
    """(input_ids, answer mask): a question row as data.py renders it (the reply is the answer),
    or text + end of text (the restated facts after `recall_from` count as answers)."""
    if "text" not in doc:
        prompt = [{"role": "user", "content": doc["prompt"]}]
        reply = [{"role": "assistant", "content": doc["response"]}]
        return encode_single_turn(tokenizer, prompt, reply, 0, "response")
    encoded = tokenizer(doc["text"], add_special_tokens=False, return_offsets_mapping=True)
    start = doc.get("recall_from") or len(doc["text"])
    mask = [int(begin >= start) for begin, _ in encoded["offset_mapping"]]
    return encoded["input_ids"] + [tokenizer.eos_token_id], mask + [0]


def read_docs(path: str | Path) -> list[dict]:
    columns = pq.read_schema(path).names
    keep = ["text", "recall_from"] if "text" in columns else ["prompt", "response"]
    return pq.read_table(path, columns=keep).to_pylist()


class PackedDocuments(torch.utils.data.IterableDataset):
    """Endless packed rows of at most `tokens_per_step` tokens, documents in a seeded shuffle
    (each data-loader worker takes every n-th document)."""

    def __init__(self, docs: list[dict], tokenizer, tokens_per_step: int, seed: int):
        self.docs, self.tokenizer, self.tokens_per_step, self.seed = docs, tokenizer, tokens_per_step, seed

    def documents(self, worker: int, workers: int):
        """Endless (input_ids, answer mask, is a question) of this worker's documents."""
        mine, epoch = list(range(worker, len(self.docs), workers)), 0
        while True:
            random.Random(f"{self.seed}/{worker}/{epoch}").shuffle(mine)
            for index in mine:
                yield *encode_document(self.docs[index], self.tokenizer), "text" not in self.docs[index]
            epoch += 1

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        ids, answer, lengths, questions = [], [], [], []
        for doc_ids, mask, question in self.documents(worker, workers):
            doc_ids, mask = doc_ids[: self.tokens_per_step], mask[: self.tokens_per_step]
            if lengths and len(ids) + len(doc_ids) > self.tokens_per_step:
                yield _pack(ids, answer, lengths, questions)
                ids, answer, lengths, questions = [], [], [], []
            ids += doc_ids
            answer += mask
            lengths.append(len(doc_ids))
            questions.append(question)


class CopyDocuments(PackedDocuments):
    """Endless packed rows of random-token copy documents (data.copy_document): the
    induction warm-up. Tokens are drawn from the vocabulary less its special tokens."""

    def __init__(self, tokenizer, tokens_per_step: int, seed: int, lengths: tuple[int, int]):
        super().__init__([], tokenizer, tokens_per_step, seed)
        special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
        self.vocab = [i for i in range(len(tokenizer)) if i not in special]
        self.lengths = lengths

    def documents(self, worker: int, workers: int):
        rng = random.Random(f"swaa-repro-copy/{self.seed}/{worker}")
        while True:
            yield *copy_document(rng, self.vocab, *self.lengths), False


def _pack(ids: list[int], answer: list[int], lengths: list[int], questions: list[bool]) -> dict:
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "answer": torch.tensor(answer, dtype=torch.bool),
        "lengths": torch.tensor(lengths, dtype=torch.long),
        "question": torch.tensor(questions, dtype=torch.bool),  # per document: a question row
    }


def loader(dataset: PackedDocuments, args: PretrainArgs):
    extra = {"prefetch_factor": 4} if args.num_workers else {}
    return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=args.num_workers, **extra))


# ------------------------------------------------------------------------------------------
# One step
# ------------------------------------------------------------------------------------------
def packed_loss(model, batch: dict, lm_weight: float, device) -> tuple[torch.Tensor, dict]:
    """Answer loss + lm_weight * next-token loss of one packed row; also answer-token accuracy."""
    ids = batch["input_ids"].to(device, non_blocking=True)
    lengths = batch["lengths"]
    cu = F.pad(lengths.cumsum(0), (1, 0)).to(device=device, dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lengths.tolist()]).to(device)
    max_len = int(lengths.max())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=ids.is_cuda)
    with autocast:
        hidden = model.model(
            input_ids=ids[None],
            position_ids=positions[None],
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=max_len,
            max_length_k=max_len,
        ).last_hidden_state[0, :-1]
        logits = model.lm_head(hidden).float()
    targets = ids[1:]
    valid = torch.ones_like(targets, dtype=torch.bool)
    valid[cu[1:-1].long() - 1] = False  # a document's last token does not predict the next document
    answer = batch["answer"].to(device)[1:] & valid
    text = valid & ~answer
    ce = F.cross_entropy(logits, targets, reduction="none")
    zero = ce.new_zeros(())
    answer_loss = ce[answer].mean() if answer.any() else zero
    text_loss = ce[text].mean() if text.any() else zero
    with torch.no_grad():
        stats = {
            "answer_loss": answer_loss.detach(),
            "text_loss": text_loss.detach(),
            **answer_accuracy(logits.argmax(-1) == targets, answer, lengths.to(device), batch["question"].to(device)),
        }
    return answer_loss + lm_weight * text_loss, stats


def answer_accuracy(correct: torch.Tensor, answer: torch.Tensor, lengths: torch.Tensor, question: torch.Tensor) -> dict:
    """Teacher-forced accuracy over the answer tokens, and the share of question documents whose
    whole answer is predicted right (close to the greedy accuracy the evaluation measures)."""
    doc = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)[1:]
    on_question = answer & question[doc]
    wrong = torch.zeros_like(question, dtype=torch.long).index_add_(0, doc, (on_question & ~correct).long())
    asked = torch.zeros_like(question, dtype=torch.long).index_add_(0, doc, on_question.long()) > 0
    return {
        "answer_token_acc": correct[answer].float().mean()
        if answer.any()
        else correct.new_zeros((), dtype=torch.float),
        "question_exact": (wrong[asked] == 0).float().mean()
        if asked.any()
        else correct.new_zeros((), dtype=torch.float),
    }


@torch.no_grad()
def heldout_exact(model, tokenizer, docs: list[dict], device, tokens_per_step: int) -> dict:
    """Teacher-forced share of held-out question rows whose whole answer is predicted right, and the
    answer-token accuracy (averaged over packed rows), in one pass over `docs`."""
    was_training = model.training
    model.eval()
    stream = PackedDocuments(docs, tokenizer, tokens_per_step, seed=0)
    exact = token = 0.0
    batches, seen = iter(stream), 0
    while seen < len(docs):
        batch = next(batches)
        n = int(batch["lengths"].numel())
        _, stats = packed_loss(model, batch, 0.0, device)
        exact += float(stats["question_exact"]) * n
        token += float(stats["answer_token_acc"]) * n
        seen += n
    model.train(was_training)
    return {"heldout_exact": round(exact / seen, 4), "heldout_token_acc": round(token / seen, 4)}


def lr_at(progress: float, step: int, args: PretrainArgs) -> float:
    warmup = min(1.0, (step + 1) / max(args.warmup_steps, 1))
    return args.learning_rate * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------
# The "swaa" attention under autocast: fp32 weights make Qwen3's q/k norms return fp32 next to
# a bf16 v, and the kernel takes one dtype.
AUTOCAST_ATTENTION = "swaa_autocast"


def _autocast_attention(module, query, key, value, *args, **kwargs):
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else value.dtype
    return swaa_attention_forward(module, query.to(dtype), key.to(dtype), value.to(dtype), *args, **kwargs)


def build_model(args: PretrainArgs, tokenizer) -> PreTrainedModel:
    """A random-init model with full attention through the "swaa" attention (autocast-safe for training)."""
    register_swaa_attention()
    AttentionInterface.register(AUTOCAST_ATTENTION, _autocast_attention)
    AttentionMaskInterface.register(AUTOCAST_ATTENTION, flash_attention_mask)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(model_config(args, tokenizer), attn_implementation=ATTN_IMPLEMENTATION)
    apply_swaa(model, SWAAConfig())  # full attention in every layer
    model.set_attn_implementation(AUTOCAST_ATTENTION)
    return model


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True):
    """torch.use_deterministic_algorithms(True, warn_only=True) inside the block (cuBLAS with a
    fixed workspace), the previous setting after it; nothing when not `enabled`."""
    if not enabled:
        yield
        return
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: set before any matmul
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def pretrain(args: PretrainArgs) -> dict:
    """Train, save the model (bf16) and tokenizer to out_dir; return a summary."""
    with deterministic_algorithms(args.deterministic):
        return _pretrain(args)


def _pretrain(args: PretrainArgs) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model = build_model(args, tokenizer).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Pretraining a %.1fM-parameter Qwen3 (%d layers, width %d) with full attention on %s",
        params / 1e6,
        args.num_layers,
        args.hidden_size,
        device,
    )
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    data = Path(args.data_dir)
    # Short phase: short questions + look-up drills (lm_short, filler text, only where no drills were written).
    drill = data / "drill.parquet" if (data / "drill.parquet").is_file() else data / "lm_short.parquet"
    phases = [
        read_docs(data / "train_short.parquet") + read_docs(drill),
        read_docs(data / "train.parquet") + read_docs(data / "lm.parquet"),
    ]
    streams = [
        loader(PackedDocuments(docs, tokenizer, args.tokens_per_step, seed=args.seed * 10 + k), args)
        for k, docs in enumerate(phases)
    ]
    copies = None
    if args.copy_warmup_steps or args.copy_every:
        copies = loader(
            CopyDocuments(tokenizer, args.tokens_per_step, args.seed, (args.copy_min_length, args.copy_max_length)),
            args,
        )
    heldout = []
    if args.eval_every and (data / "eval_short.parquet").is_file():
        heldout = read_docs(data / "eval_short.parquet")[: args.eval_rows]
    log_path = out / "pretrain_log.jsonl"
    start, step, tokens, log = time.monotonic(), 0, 0, open(log_path, "w")
    while step < args.max_steps:
        by_steps, by_time = step / args.max_steps, (time.monotonic() - start) / args.time_budget_s
        if max(by_steps, by_time) >= 1.0:
            break
        progress = by_steps if args.schedule == "steps" else max(by_steps, by_time)
        phase = 0 if progress < args.short_fraction else 1
        copy = args.is_copy_step(step)
        batch = next(copies if copy else streams[phase])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress, step, args)
        # On copy steps only the second copy has a loss: the first is random, nothing to predict.
        loss, stats = packed_loss(model, batch, 0.0 if copy else args.lm_weight, device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step, tokens = step + 1, tokens + batch["input_ids"].numel()
        check = bool(heldout) and step % args.eval_every == 0
        if step % args.log_every == 0 or step == 1 or check:
            record = {
                "step": step,
                "phase": phase,
                "copy": copy,
                "elapsed_s": round(time.monotonic() - start, 1),
                "tokens": tokens,
                "lr": optimizer.param_groups[0]["lr"],
                **{k: round(float(v), 4) for k, v in stats.items()},
            }
            if check or (heldout and step == 1):
                record.update(heldout_exact(model, tokenizer, heldout, device, args.tokens_per_step))
            log.write(json.dumps(record) + "\n")
            log.flush()
            logger.info("pretrain %s", record)
    log.close()
    elapsed = time.monotonic() - start
    if args.schedule == "steps" and step < args.max_steps:
        # The schedule expected max_steps: a base cut short (at a high learning rate, perhaps in the
        # wrong phase) is not the one asked for, so none is saved.
        raise RuntimeError(
            f"pretraining stopped by time_budget_s ({args.time_budget_s:.0f} s) at step {step} of max_steps "
            f"{args.max_steps} under schedule: steps; no base saved (the log is {log_path}): raise time_budget_s"
        )
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {
        "parameters": params,
        "steps": step,
        "tokens": tokens,
        "seconds": round(elapsed, 1),
        "tokens_per_second": round(tokens / max(elapsed, 1e-9)),
        "device": str(device),
        "args": asdict(args),
    }
    (out / "pretrain_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("Pretrained %d steps, %.1fM tokens in %.0f s; saved to %s", step, tokens / 1e6, elapsed, out)
    return summary
