"""Multi-GPU benchmark: the same SWAA LoRA run under each accelerate engine, with losses,
tokens/s per GPU and peak memory per GPU; benchmarks/bench_multi_gpu.sh runs the whole set.

    python benchmarks/bench_multi_gpu.py make-base /tmp/qwen3-4b-random       # random Qwen3-4B shape
    accelerate launch --config_file recipes/accelerate/zero3.yaml benchmarks/bench_multi_gpu.py \
        train --recipe qwen3_swa2k --json out/zero3.json model.name_or_path=/tmp/qwen3-4b-random ...
    python benchmarks/bench_multi_gpu.py reload /tmp/qwen3-4b-random out/*.json  # adapters on one GPU
    python benchmarks/bench_multi_gpu.py table out/*.json

`train` is `train.py` (build_trainer, train, save_model) plus a callback that times every
optimizer step (CUDA-synchronized) and a collator wrapper that counts each batch's tokens;
every rank writes <json>.rank<R>. Timings skip step 1 (Triton compilation and autotuning).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

import swaa_train

if __package__ in (None, ""):  # run as a script: the benchmarks package from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.shapes import QWEN3_4B  # noqa: E402

QWEN3_4B_SHAPE = {**QWEN3_4B, "max_position_embeddings": 1 << 20}


def make_base(out: str) -> None:
    """Random-init Qwen3-4B shape in bf16, saved with the demo tokenizer (its ids fit the vocab)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(Qwen3Config(**QWEN3_4B_SHAPE), dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(Path(swaa_train.__file__).resolve().parent / "assets" / "tiny-qwen3").save_pretrained(
        out
    )


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepClock(TrainerCallback):
    def __init__(self):
        self.seconds, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        _sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        self.seconds.append(time.perf_counter() - self._start)


class TokenCounter:
    """Counts the tokens of each batch this rank's data loader collates, in order."""

    def __init__(self, collator):
        self.collator, self.tokens = collator, []

    def __call__(self, examples):
        batch = self.collator(examples)
        self.tokens.append(int(batch["input_ids"].numel()))
        return batch


def train(recipe_name: str, overrides: list[str], json_path: str) -> None:
    from swaa_train.recipe import load_recipe
    from swaa_train.run import build_trainer

    recipe, raw = load_recipe(recipe_name, overrides)
    trainer = build_trainer(recipe, raw)
    clock, counter = StepClock(), TokenCounter(trainer.data_collator)
    trainer.add_callback(clock)
    trainer.data_collator = counter
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    trainer.save_model(recipe.training.output_dir)
    pc = trainer.accelerator.parallelism_config
    record = {
        "rank": trainer.accelerator.process_index,
        "world": trainer.accelerator.num_processes,
        "sp": pc.sp_size if pc is not None else 1,
        "engine": str(trainer.accelerator.distributed_type),
        "output_dir": recipe.training.output_dir,
        "step_seconds": clock.seconds,
        "batch_tokens": counter.tokens,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else 0.0,
        "log": [e for e in trainer.state.log_history if "loss" in e],
    }
    Path(f"{json_path}.rank{record['rank']}").write_text(json.dumps(record))


def _runs(paths: list[str]) -> dict[str, list[dict]]:
    runs = {}
    for path in paths:
        ranks = sorted(Path(path).parent.glob(Path(path).name + ".rank*"))
        if ranks:
            runs[Path(path).stem] = [json.loads(r.read_text()) for r in ranks]
    return runs


def _tokens_per_second_per_gpu(ranks: list[dict]) -> float:
    sp, steps = ranks[0]["sp"], len(ranks[0]["step_seconds"])
    if sp > 1:  # step s trains the row collated by rank s % sp (its (s // sp)-th batch), on all sp GPUs
        tokens = [ranks[s % sp]["batch_tokens"][s // sp] for s in range(1, steps)]
        return sum(tokens) / sum(ranks[0]["step_seconds"][1:]) / sp
    rates = [sum(r["batch_tokens"][1:steps]) / sum(r["step_seconds"][1:]) for r in ranks]
    return statistics.mean(rates)


def table(paths: list[str]) -> str:
    lines = [
        "| run | GPUs | tokens/step/GPU | step s (median, 2..N) | tokens/s/GPU | peak alloc GiB/GPU | "
        "peak reserved GiB/GPU | losses | grad norm step 1 |",
        "| --- " * 9 + "|",
    ]
    for name, ranks in _runs(paths).items():
        r0 = next(r for r in ranks if r["rank"] == 0)
        steps = len(r0["step_seconds"])
        per_gpu = statistics.mean(sum(r["batch_tokens"][:steps]) / steps for r in ranks) / r0["sp"]
        losses = " ".join(f"{e['loss']:.4f}" for e in r0["log"])
        allocated = " / ".join(f"{r['peak_allocated_gib']:.1f}" for r in ranks)
        reserved = " / ".join(f"{r['peak_reserved_gib']:.1f}" for r in ranks)
        lines.append(
            f"| {name} | {r0['world']} | {per_gpu:.0f} | {statistics.median(r0['step_seconds'][1:]):.2f} | "
            f"{_tokens_per_second_per_gpu(ranks):.0f} | {allocated} | {reserved} | {losses} | "
            f"{float(r0['log'][0].get('grad_norm', 'nan')):.4f} |"
        )
    return "\n".join(lines)


def reload(base: str, paths: list[str]) -> str:
    """Load every run's adapter onto the base on one device; compare its LoRA weights with the
    first run's and compute the loss of one fixed 4k-token sequence under SWAA attention."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from swaa_train.attention import apply_swaa
    from swaa_train.swaa_config import SWAAConfig

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, device_map=device)
    tokens = torch.randint(3, 2000, (1, 4096), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        base_loss = model(input_ids=tokens, labels=tokens).loss.item()
    reference, lines = (
        None,
        [
            f"Base model alone (full attention): loss {base_loss:.4f} on the same 4k tokens.",
            "",
            "| run | LoRA tensors | max abs diff of LoRA weights vs first run | loss, 4k tokens |",
            "| --- | --- | --- | --- |",
        ],
    )
    for name, ranks in _runs(paths).items():
        out = ranks[0]["output_dir"]
        peft = PeftModel.from_pretrained(apply_swaa(model, SWAAConfig.load(out)), out)
        weights = {k: v.float() for k, v in peft.state_dict().items() if "lora_" in k}
        reference = reference or weights
        diff = max((weights[k] - reference[k]).abs().max().item() for k in reference)
        with torch.no_grad():
            loss = peft(input_ids=tokens, labels=tokens).loss.item()
        lines.append(f"| {name} | {len(weights)} | {diff:.2e} | {loss:.4f} |")
        model = peft.unload()
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("make-base").add_argument("out")
    p = sub.add_parser("train")
    p.add_argument("--recipe", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("reload")
    p.add_argument("base")
    p.add_argument("jsons", nargs="+")
    sub.add_parser("table").add_argument("jsons", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "make-base":
        make_base(args.out)
    elif args.command == "train":
        train(args.recipe, args.overrides, args.json)
    elif args.command == "reload":
        print(reload(args.base, args.jsons))
    else:
        print(table(args.jsons))


if __name__ == "__main__":
    main(sys.argv[1:])
