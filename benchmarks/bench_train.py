"""Long-context LoRA training step: full attention vs the SWAA recipe vs all-layers SWA, one table.

    python benchmarks/bench_train.py                       # Qwen3-4B shape, T = 16k..256k, on CUDA
    python benchmarks/bench_train.py --tiny --lengths 256,512 --ablation 512   # CPU smoke test

Prints one markdown table (tokens/s, peak GPU memory, where the time of one profiled step goes),
then the largest T that fits for each attention; --out DIR also writes it with a JSON of every cell.

One LoRA step of the toolkit's own trainer (SWAATrainer.train: forward, backward, optimizer
step, with the recipe's LoRA, gradient checkpointing and memory techniques) on a random-init
model of Qwen3-4B's exact shape (or --shape llama3.1-8b), built from its config (nothing downloaded), over one packed
row of T tokens whose documents are supervised on their last `supervised` tokens.

Each cell is one (attention, memory techniques, T): warm-up steps, then one step under
torch.profiler; its GPU kernel time is split into attention / linear (GEMMs) / loss (TRL's
fused LM head, forward and backward) / optimizer / other / host-device copies by the op that
launched each kernel. Cells are run in an order that keeps their cost down: liger's kernels
cannot be taken out of a model again, so the cells without them come first; a cell whose
predicted step time exceeds the limit is skipped, not run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AttentionInterface, AutoConfig, TrainerCallback
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
from transformers.utils import logging

import swaa_train

if __package__ in (None, ""):  # run as a script: the benchmarks package from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.shapes import SHAPES  # noqa: E402
from swaa_attn import full_causal_varlen
from swaa_train.attention import IGNORE_INDEX, apply_swaa
from swaa_train.memory import configure_training, limit_offloading, offload_limit_bytes, use_expandable_segments
from swaa_train.model import load_model, load_tokenizer
from swaa_train.recipe import MemoryArgs, ModelArgs, load_recipe
from swaa_train.swaa_config import SWAAConfig
from swaa_train.trainer import SWAATrainer, lora_config

logger = logging.get_logger(__name__)

GIB = 2**30
RECIPE = "qwen3_swa2k"
TINY_ASSETS = Path(swaa_train.__file__).resolve().parent / "assets" / "tiny-qwen3"
TINY_SIZES = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
)
FULL, RECIPE_SWAA, ALL_SWA = "full causal (SDPA)", "SWAA recipe", "SWA all layers"
ATTENTIONS = (FULL, RECIPE_SWAA, ALL_SWA)
ALL_ON = "defaults"
# What each memory technique buys, one at a time from none (liger-free sets first, see module doc).
# "defaults" is MemoryArgs(): liger kernels + offloaded checkpoints + expandable segments.
TECHNIQUES = {
    "none": MemoryArgs(liger_kernel=False, activation_offloading=False),
    "liger": MemoryArgs(activation_offloading=False),
    ALL_ON: MemoryArgs(),
}
SHORT_NAMES = {"full": FULL, "recipe": RECIPE_SWAA, "swa": ALL_SWA}
CATEGORIES = ("attention", "linear", "loss", "optimizer", "other", "copy")


def attention_settings(recipe_swaa: SWAAConfig) -> dict[str, SWAAConfig | None]:
    """The three rows: None = full causal attention through SDPA."""
    return {FULL: None, RECIPE_SWAA: recipe_swaa, ALL_SWA: dataclasses.replace(recipe_swaa, non_sliding_layers=[])}


# ------------------------------------------------------------------------------------------
# The full-attention baseline: SDPA per document of the packed row
# ------------------------------------------------------------------------------------------
SDPA_VARLEN = "sdpa_varlen"


def sdpa_varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Full causal attention through torch SDPA (cuDNN first), one call per document of the packed row (B = 1).

    The baseline the SWAA kernel is measured against: no T x T mask, FlashAttention/cuDNN kernels,
    through swaa_attn.full_causal_varlen, which also runs the recipe's full-attention layers on CUDA.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        cu = torch.tensor([0, query.shape[2]], dtype=torch.int32)
    tokens_first = lambda t: t[0].transpose(0, 1)  # noqa: E731  (B=1, H, S, D) -> (S, H, D)
    out = full_causal_varlen(tokens_first(query), tokens_first(key), tokens_first(value), cu, scaling)
    return out[None], None


def set_attention(model, swaa: SWAAConfig | None) -> None:
    """Switch the (PEFT-wrapped) model between SWAA settings and the SDPA baseline."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if swaa is not None:
        apply_swaa(base, swaa)
        return
    AttentionInterface.register(SDPA_VARLEN, sdpa_varlen_attention)
    AttentionMaskInterface.register(SDPA_VARLEN, flash_attention_mask)
    base.set_attn_implementation(SDPA_VARLEN)


# ------------------------------------------------------------------------------------------
# Model, batch, trainer
# ------------------------------------------------------------------------------------------
def packed_example(tokens: int, doc_tokens: int | None, supervised: int, vocab: int, seed: int = 0) -> dict:
    """One packed row of `tokens` tokens: documents of `doc_tokens` (None: one document), last `supervised` scored.

    Labels come ready (-100 elsewhere): the trainer skips dataset preparation, which would build them.
    """
    doc_tokens = doc_tokens or tokens
    lengths = [doc_tokens] * (tokens // doc_tokens) + ([tokens % doc_tokens] if tokens % doc_tokens else [])
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (tokens,), generator=g).tolist()
    labels, start = [], 0
    for n in lengths:
        answer = min(supervised, n - 1)
        labels += [IGNORE_INDEX] * (n - answer) + ids[start + n - answer : start + n]
        start += n
    return {"input_ids": ids, "labels": labels, "seq_lengths": lengths}


def build_model(model_type: str, shape: dict, swaa: SWAAConfig, device: str, workdir: Path):
    """A random-init causal LM of `shape` through the toolkit's loader, initialised directly on `device`."""
    config_dir = workdir / "config"
    AutoConfig.for_model(model_type, **shape, dtype="bfloat16").save_pretrained(config_dir)
    with torch.device(device):
        model = load_model(ModelArgs(name_or_path=str(config_dir), from_config=True), swaa)
    return model.to(device)


class BenchSetup:
    """The recipe, a model, a tokenizer, and one SWAATrainer per set of memory techniques."""

    def __init__(
        self, model_type: str, shape: dict, device: str, workdir: Path, recipe: str = RECIPE, overrides: list[str] = ()
    ):
        cpu = ["training.bf16=false", "training.use_cpu=true"] if device == "cpu" else []
        self.recipe, self.raw = load_recipe(recipe, [*cpu, *overrides])
        self.device, self.workdir, self.bf16 = device, workdir, device != "cpu"
        self.model = build_model(model_type, shape, self.recipe.swaa, device, workdir)
        self.model_type = model_type
        self.vocab = shape["vocab_size"]
        self.tokenizer = load_tokenizer(ModelArgs(name_or_path=str(TINY_ASSETS)))
        self.trainers: dict[str, object] = {}
        self.liger_applied = False

    def training_args(self, memory: MemoryArgs):
        from trl import SFTConfig

        values = dict(self.raw["training"])
        values.update(  # one optimizer step per batch, nothing written, no evaluation
            output_dir=str(self.workdir / "out"),
            max_steps=1,
            gradient_accumulation_steps=1,
            lr_scheduler_type="constant",
            warmup_steps=0,
            save_strategy="no",
            logging_steps=1,
            report_to="none",
            max_length=None,
            dataset_kwargs={"skip_prepare_dataset": True},
            bf16=self.bf16,
            use_cpu=self.device == "cpu",
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        return configure_training(memory, SFTConfig(**values))

    def trainer(self, technique: str):
        """The trainer of `technique` (built on first use; liger, once in, stays in the model)."""
        if technique in self.trainers:
            return self.trainers[technique]
        memory = TECHNIQUES[technique]
        args = self.training_args(memory)
        if self.liger_applied and not args.use_liger_kernel:
            raise ValueError(f"technique {technique!r} without liger after liger was applied: order the cells")
        first = not self.trainers
        trainer = SWAATrainer(
            model=self.model,
            args=args,
            train_dataset=Dataset.from_list([{"input_ids": [0, 1]}]),
            processing_class=self.tokenizer,
            peft_config=lora_config(self.recipe.lora) if first else None,
            swaa_config=self.recipe.swaa,
            base_model=f"random-init {self.model_type} shape",
        )
        limit_offloading(trainer, offload_limit_bytes(memory))  # a no-op without activation offloading
        self.model = trainer.model  # the PEFT model from now on
        self.liger_applied |= bool(args.use_liger_kernel)
        self.trainers[technique] = trainer
        return trainer

    def drop(self, technique: str) -> None:
        """Forget a trainer (after an out-of-memory error its offloading state is not to be trusted)."""
        self.trainers.pop(technique, None)


# ------------------------------------------------------------------------------------------
# One cell: warm-up steps, one profiled step
# ------------------------------------------------------------------------------------------
class StepRecorder(TrainerCallback):
    """Times each optimizer step (device synchronised), records its peak memory, profiles the last one."""

    def __init__(self, profile_step: int | None, device: str):
        self.profile_step, self.cuda = profile_step, device != "cpu"
        self.seconds, self.peaks, self.reserved, self.losses = [], [], [], []
        self.profile, self._profiling, self._optimizer_range, self._t0 = None, False, None, 0.0

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        if state.global_step + 1 == self.profile_step:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profile = torch.profiler.profile(activities=activities)
            self.profile.start()
            self._profiling = True
        self._t0 = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._optimizer_range = torch.profiler.record_function("optimizer")
        self._optimizer_range.__enter__()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._optimizer_range.__exit__(None, None, None)

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.seconds.append(time.perf_counter() - self._t0)
        self.peaks.append(torch.cuda.max_memory_allocated() / GIB if self.cuda else float("nan"))
        self.reserved.append(torch.cuda.max_memory_reserved() / GIB if self.cuda else float("nan"))
        if self._profiling and state.global_step == self.profile_step:
            self.profile.stop()
            self._profiling = False

    def close(self) -> None:
        """Stop a profiler that an exception left running."""
        if self._profiling:
            self.profile.stop()
            self._profiling = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


MATMUL_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::matmul",
    "aten::linear",
    "aten::baddbmm",
    "aten::_scaled_mm",
}
ATTENTION_MARKS = ("swaaattn", "scaled_dot_product", "scaleddotproduct", "flash_attn", "sdpa")
GEMM_MARKS = ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul")


def classify(kernel: str, ops: list[str]) -> str:
    """Category of a kernel launched by the op chain `ops` (innermost first)."""
    lowered = [op.lower() for op in ops]
    if any(op.startswith("optimizer") for op in lowered):
        return "optimizer"
    if any("chunkedlogprob" in op for op in lowered):
        return "loss"
    name = kernel.lower()
    if name.startswith(("memcpy", "memset")):
        return "copy"
    if any(mark in op for op in lowered for mark in ATTENTION_MARKS) or name.startswith(("_fwd_kernel", "_bwd_")):
        return "attention"
    if (ops and ops[0] in MATMUL_OPS) or any(mark in name for mark in GEMM_MARKS):
        return "linear"
    return "other"


def _op_chain(event) -> list[str]:
    chain = []
    while event is not None:
        chain.append(event.name)
        event = event.cpu_parent
    return chain


def time_by_category(profile) -> dict[str, float]:
    """Seconds of device time per category (CPU time of leaf ops when no device kernels were traced)."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    events = [e for e in profile.events() if e.device_type == torch.autograd.DeviceType.CPU]
    kernels = [(k.name, k.duration, e) for e in events for k in e.kernels]
    if not kernels:  # CPU run: each op's own time
        kernels = [(e.name, e.self_cpu_time_total, e) for e in events]
    for name, duration_us, event in kernels:
        totals[classify(name, _op_chain(event))] += duration_us / 1e6
    return totals


@dataclasses.dataclass
class Cell:
    attention: str
    tokens: int
    technique: str = ALL_ON
    status: str = "ok"
    step_s: float = float("nan")
    peak_gib: float = float("nan")
    reserved_gib: float = float("nan")
    loss: float = float("nan")
    seconds: dict = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.step_s if self.ok else float("nan")


def run_cell(setup: BenchSetup, cell: Cell, warmup: int, doc_tokens: int | None, supervised: int) -> Cell:
    """Train warmup + 1 steps of `cell`'s setting; fill in the last step's time, peak memory and profile."""
    trainer = setup.trainer(cell.technique)
    set_attention(trainer.model, attention_settings(setup.recipe.swaa)[cell.attention])
    steps = warmup + 1
    example = packed_example(cell.tokens, doc_tokens, supervised, setup.vocab)
    trainer.train_dataset = Dataset.from_list([example] * steps)
    trainer.args.max_steps = steps
    trainer.optimizer, trainer.lr_scheduler = None, None  # fresh LoRA optimizer per cell
    recorder = StepRecorder(profile_step=steps, device=setup.device)
    trainer.add_callback(recorder)
    oom = False
    try:
        trainer.train()
    except torch.OutOfMemoryError:
        oom = True
    finally:
        recorder.close()
        trainer.remove_callback(recorder)
        _release(trainer)
    if oom:
        setup.drop(cell.technique)
        cell.status = "OOM"
        return cell
    cell.step_s, cell.peak_gib, cell.reserved_gib = recorder.seconds[-1], recorder.peaks[-1], recorder.reserved[-1]
    cell.loss = recorder.losses[-1] if recorder.losses else float("nan")
    cell.seconds = time_by_category(recorder.profile)
    return cell


def _release(trainer) -> None:
    """Undo what Trainer.train leaves behind (accelerate's forward wrappers, optimizer, gradients)."""
    trainer.model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    trainer.accelerator.free_memory()
    trainer.optimizer, trainer.lr_scheduler = None, None
    trainer.model.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        # Pinned host blocks of offloaded checkpoints stay cached per size; a longer T needs new ones.
        for name in ("_accelerator_emptyHostCache", "_host_emptyCache"):  # newer / older torch
            if hasattr(torch._C, name):
                getattr(torch._C, name)()
                break


# ------------------------------------------------------------------------------------------
# The grid, the estimates, the table
# ------------------------------------------------------------------------------------------
def fit(points: list[tuple[float, float]], powers: tuple[int, ...]) -> list[float] | None:
    """Least-squares coefficients of y = sum c_p x^p over the given powers; None if too few points."""
    if len(points) < len(powers):
        return None
    a = torch.tensor([[x**p for p in powers] for x, _ in points], dtype=torch.float64)
    b = torch.tensor([[y] for _, y in points], dtype=torch.float64)
    return torch.linalg.lstsq(a, b).solution.flatten().tolist()


def predict_step_s(cells: list[Cell], attention: str, tokens: int) -> float | None:
    """Step time at `tokens` from the measured steps of `attention` (linear + quadratic in T)."""
    points = [(c.tokens, c.step_s) for c in cells if c.ok and c.attention == attention and c.technique == ALL_ON]
    coef = fit(points, (1, 2)) if len(points) >= 2 else None
    if coef is None:
        return None
    return coef[0] * tokens + max(coef[1], 0.0) * tokens**2


def largest_fit(cells: list[Cell], attention: str, capacity_gib: float, step: int = 16384) -> int | None:
    """Largest multiple of `step` whose peak memory, extrapolated linearly from the measured cells, fits."""
    points = [
        (c.tokens, c.peak_gib)
        for c in cells
        if c.ok and c.attention == attention and c.technique == ALL_ON and c.tokens >= 2 * step
    ]
    coef = fit(points, (0, 1))
    if coef is None or coef[1] <= 0:
        return None
    return int((capacity_gib - coef[0]) / coef[1] // step * step)


def grid(lengths: list[int], ablation_tokens: list[int], attentions=ATTENTIONS) -> list[Cell]:
    """The cells in running order: liger-free ablations first, then per length the cheapest attention first."""
    ablations = [technique for technique in TECHNIQUES if technique != ALL_ON]
    cells = [Cell(RECIPE_SWAA, t, technique) for technique in ablations for t in ablation_tokens]
    cost = {ALL_SWA: 0, RECIPE_SWAA: 1, FULL: 2}
    for t in lengths:
        cells += [Cell(a, t) for a in sorted(attentions, key=cost.get)]
    return cells


def parse_cells(spec: str) -> list[Cell]:
    """Cells named on the command line, in running order: 'swa@256k,recipe@256k,swa@256k/liger'."""
    cells = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, rest = item.partition("@")
        length, _, technique = rest.partition("/")
        tokens = int(float(length[:-1]) * 1024) if length.endswith("k") else int(length)
        if name not in SHORT_NAMES or (technique or ALL_ON) not in TECHNIQUES:
            raise ValueError(
                f"cell {item!r}: attention one of {list(SHORT_NAMES)}, technique one of {list(TECHNIQUES)}"
            )
        cells.append(Cell(SHORT_NAMES[name], tokens, technique or ALL_ON))
    return cells


def run_grid(
    setup: BenchSetup,
    cells: list[Cell],
    *,
    warmup: int,
    doc_tokens: int | None,
    supervised: int,
    max_step_s: float,
    log=print,
) -> list[Cell]:
    done: list[Cell] = []
    for cell in cells:
        expected = predict_step_s(done, cell.attention, cell.tokens)
        longer = [
            c.tokens
            for c in done
            if c.ok and (c.attention, c.technique) == (cell.attention, cell.technique) and c.tokens > cell.tokens
        ]
        if longer:  # a fallback length after a longer one fitted
            cell.status = f"skipped ({k(max(longer))} fits)"
        elif expected is not None and expected > max_step_s:
            cell.status = f"skipped (est. {expected:.0f} s/step)"
        else:
            # Every cell warms up: a cell that skipped it after another attention had run at the same
            # length measured 33.6 s for a 19.7-s step (first-step costs that are not kernel time).
            run_cell(setup, cell, warmup, doc_tokens, supervised)
        done.append(cell)
        log(format_cell(cell))
    return done


def k(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)


def format_cell(cell: Cell) -> str:
    return (
        f"{cell.attention:20s} {cell.technique:18s} T={k(cell.tokens):>5s} {cell.status:>8s} "
        f"{cell.tokens_per_s:9.0f} tok/s {cell.step_s:7.2f} s {cell.peak_gib:6.1f} GiB "
        f"(reserved {cell.reserved_gib:.1f}) loss {cell.loss:.3f} "
        + " ".join(f"{name} {value:.2f}" for name, value in cell.seconds.items())
    )


HEADER = (
    "| attention | memory techniques | T | tokens/s | vs full | peak GiB | step s | attention s | linear s "
    "| loss s | optimizer s | other s | copies s |"
)


def table(cells: list[Cell]) -> str:
    full = {c.tokens: c for c in cells if c.attention == FULL and c.technique == ALL_ON and c.ok}
    lines = [HEADER, "|" + " --- |" * (HEADER.count("|") - 1)]
    for c in sorted(cells, key=lambda c: (c.technique != ALL_ON, ATTENTIONS.index(c.attention), c.tokens)):
        if not c.ok:
            lines.append(f"| {c.attention} | {c.technique} | {k(c.tokens)} | {c.status} |" + " |" * 9)
            continue
        ref = full.get(c.tokens)
        compare = ref is not None and c.attention != FULL and c.technique == ALL_ON
        speedup = f"{c.tokens_per_s / ref.tokens_per_s:.2f}x" if compare else "-"
        s = c.seconds
        lines.append(
            f"| {c.attention} | {c.technique} | {k(c.tokens)} | {c.tokens_per_s:,.0f} | {speedup} | {c.peak_gib:.1f} "
            f"| {c.step_s:.2f} | " + " | ".join(f"{s.get(name, 0.0):.2f}" for name in CATEGORIES) + " |"
        )
    return "\n".join(lines)


def summary(cells: list[Cell], capacity_gib: float, lengths: list[int]) -> list[str]:
    lines = []
    for attention in ATTENTIONS:
        ran = [c.tokens for c in cells if c.attention == attention and c.technique == ALL_ON and c.ok]
        fits = largest_fit(cells, attention, capacity_gib)
        measured = f"{k(max(ran))} measured" if ran else "none measured"
        estimate = f", ~{k(fits)} by linear extrapolation of peak memory to {capacity_gib:.0f} GiB" if fits else ""
        lines.append(f"largest T, {attention}: {measured}{estimate}")
    return lines


def environment() -> dict:
    import transformers
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, memory_gib=round(props.total_memory / GIB, 1))
    return info


def main_bench(
    lengths: list[int],
    ablation_tokens: list[int],
    *,
    tiny: bool,
    shape_name: str = "qwen3-4b",
    warmup: int,
    doc_tokens: int | None,
    supervised: int,
    max_step_s: float,
    out: Path | None,
    find_max: bool,
    cells: list[Cell] | None = None,
    log=print,
) -> str:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_type, shape = SHAPES[shape_name]
    shape = dict(shape)
    if tiny:  # the shipped tiny Qwen3's sizes on this architecture: a CPU smoke test of the harness
        tiny_config = json.loads((TINY_ASSETS / "config.json").read_text())
        shape.update({key: tiny_config[key] for key in TINY_SIZES})
    longest = max([*lengths, *ablation_tokens, *(c.tokens for c in cells or [])])
    shape["max_position_embeddings"] = max(shape["max_position_embeddings"], longest)
    with tempfile.TemporaryDirectory() as workdir:
        tiny_swaa = ["swaa.sliding_window_size=64", "swaa.keep_first=4", "swaa.non_sliding_layers=[1]"]
        setup = BenchSetup(model_type, shape, device, Path(workdir), overrides=tiny_swaa if tiny else [])
        cells = run_grid(
            setup,
            cells or grid(lengths, ablation_tokens),
            warmup=warmup,
            doc_tokens=doc_tokens,
            supervised=supervised,
            max_step_s=max_step_s,
            log=log,
        )
        capacity = torch.cuda.get_device_properties(0).total_memory / GIB if device == "cuda" else 0.0
        if find_max and device == "cuda":
            cells += probe_largest(setup, cells, capacity, warmup, doc_tokens, supervised, max_step_s, log)
    report = "\n".join([json.dumps(environment()), table(cells), *summary(cells, capacity, lengths)])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_train.md").write_text(report + "\n")
        (out / "bench_train.json").write_text(json.dumps([dataclasses.asdict(c) for c in cells], indent=1))
    return report


def probe_largest(setup, cells, capacity, warmup, doc_tokens, supervised, max_step_s, log) -> list[Cell]:
    """Run the recipe at the extrapolated largest length (one step down on OOM), within the step-time limit."""
    probes = []
    guess = largest_fit(cells, RECIPE_SWAA, capacity)
    measured = max((c.tokens for c in cells if c.ok and c.attention == RECIPE_SWAA), default=0)
    for tokens in (guess, (guess or 0) - 16384):
        if not tokens or tokens <= measured:
            break
        expected = predict_step_s(cells, RECIPE_SWAA, tokens)
        if expected is not None and expected > max_step_s:
            log(f"probe at {k(tokens)} skipped: est. {expected:.0f} s/step")
            break
        cell = run_cell(setup, Cell(RECIPE_SWAA, tokens), 0, doc_tokens, supervised)
        log(format_cell(cell))
        probes.append(cell)
        if cell.ok:
            break
    return probes


def tokens(text: str) -> list[int]:
    return [int(float(t[:-1]) * 1024) if t.endswith("k") else int(t) for t in text.split(",") if t]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lengths", type=tokens, default=tokens("16k,32k,64k,128k,256k"), help="T values, e.g. 16k,32k"
    )
    parser.add_argument(
        "--ablation",
        type=tokens,
        default=tokens("128k"),
        help="T values of the rows that add one memory technique at a time (recipe attention)",
    )
    parser.add_argument("--doc-tokens", type=tokens, default=None, help="document length in the pack (default: T)")
    parser.add_argument("--supervised", type=int, default=1024, help="supervised tokens at the end of each document")
    parser.add_argument("--warmup", type=int, default=1, help="unprofiled steps before the profiled one")
    parser.add_argument(
        "--max-step-seconds",
        type=float,
        default=150.0,
        help="skip a cell whose step time, extrapolated from the cells before it, is longer",
    )
    parser.add_argument("--find-max", action="store_true", help="run the recipe at the extrapolated largest T")
    parser.add_argument(
        "--cells",
        default="",
        help="run these cells instead of the grid: ATTENTION@T[/TECHNIQUE],... with ATTENTION one of "
        "full, recipe, swa, e.g. 'swa@256k,recipe@256k,swa@256k/liger'",
    )
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), default="qwen3-4b", help="the model's architecture and sizes"
    )
    parser.add_argument("--tiny", action="store_true", help="the shipped tiny Qwen3's sizes instead of the shape's")
    parser.add_argument("--out", type=Path, default=None, help="also write bench_train.md and .json here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    use_expandable_segments()  # before anything starts CUDA: the allocator reads it once

    report = main_bench(
        args.lengths,
        args.ablation,
        tiny=args.tiny,
        shape_name=args.shape,
        warmup=args.warmup,
        doc_tokens=args.doc_tokens[0] if args.doc_tokens else None,
        supervised=args.supervised,
        max_step_s=args.max_step_seconds,
        out=args.out,
        find_max=args.find_max,
        cells=parse_cells(args.cells),
        log=lambda line: print(line, flush=True),
    )
    print(report)


if __name__ == "__main__":
    main()
