"""Long-context generation: plain transformers against SWAA settings, one table.

    python benchmarks/bench_infer.py                          # Qwen3-4B shape, T = 32k and 128k, on CUDA
    python benchmarks/bench_infer.py --tiny --lengths 512     # CPU smoke test of the harness

One process, one random-init model of Qwen3-4B's shape in bf16 (nothing downloaded), one prompt
of T random tokens per row. The baseline is plain transformers (`attn_implementation="sdpa"`,
its default DynamicCache, `model.generate`); the SWAA rows switch the same weights to SWAA
attention and generate through `swaa_train.inference.generate_ids`. Each row is one `generate`
of `--new-tokens` + 1 tokens: the time to the first token is taken when the first logits come
out of the prefill, decode ms/token is the median time between the logits of consecutive
decoded tokens (decoding in eager transformers is host-bound, and the median keeps the host's
hiccups out). Peak memory is the
CUDA allocator's peak during the call; KV cache is what the cache holds at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList, Qwen3Config
from transformers.cache_utils import DynamicCache

if __package__ in (None, ""):  # run as a script: the benchmarks package from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.shapes import QWEN3_4B, QWEN3_4B_FULL_LAYERS  # noqa: E402
from swaa_train.attention import apply_swaa  # noqa: E402
from swaa_train.inference import CACHE_KWARG, generate_ids  # noqa: E402
from swaa_train.swaa_config import SWAAConfig  # noqa: E402

GIB = 2**30
BASELINE = "baseline, full attention (transformers sdpa)"


def settings(num_layers: int, full_layers: list[int], window: int, sinks: int) -> dict[str, SWAAConfig | None]:
    """The rows: the baseline (None) and the SWAA settings of the inference table."""
    return {
        BASELINE: None,
        "recipe (window, sinks, FA decode, full layers)": SWAAConfig(window, sinks, True, full_layers),
        "all layers SWA + FA decode": SWAAConfig(window, 0, True, []),
        "SWA + sinks + full layers, no FA decode": SWAAConfig(window, sinks, False, full_layers),
    }


@dataclass
class Row:
    setting: str
    tokens: int
    batch: int
    first_token_s: float
    decode_ms: float
    peak_gib: float
    kv_gib: float
    error: str = ""


class StepClock(LogitsProcessor):
    """Records when each step's logits come out (the device is synchronised first): the first
    after the prefill, then one per decoded token."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        if scores.is_cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())
        return scores

    def decode_ms(self) -> float:
        """Median time per decoded token: robust to the host's hiccups in a host-bound loop."""
        steps = sorted(b - a for a, b in zip(self.times, self.times[1:]))
        return 1000 * steps[len(steps) // 2]


def kv_bytes(cache) -> int:
    return sum(
        layer.keys.numel() * layer.keys.element_size() * 2
        for layer in cache.layers
        if getattr(layer, "keys", None) is not None and layer.keys.numel()
    )


def build_model(shape: dict, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(Qwen3Config(**shape), dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def run_row(model, name: str, swaa: SWAAConfig | None, ids, new_tokens: int) -> Row:
    """One generate of new_tokens + 1 tokens under `swaa` (None: plain transformers)."""
    batch, tokens = ids.shape
    clock = StepClock()
    options = dict(
        max_new_tokens=new_tokens + 1,
        min_new_tokens=new_tokens + 1,
        do_sample=False,
        logits_processor=LogitsProcessorList([clock]),
        pad_token_id=0,
    )
    cuda = ids.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if swaa is None:
        model.set_attn_implementation("sdpa")
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **{CACHE_KWARG: cache}, **options)
        kv = kv_bytes(cache)
    else:
        apply_swaa(model, swaa)
        result = generate_ids(model, ids, torch.ones_like(ids), **options)
        kv = result.memory["held_bytes"]
    peak = torch.cuda.max_memory_allocated() / GIB if cuda else 0.0
    return Row(name, tokens, batch, clock.times[0] - start, clock.decode_ms(), peak, kv / GIB)


def table(rows: list[Row]) -> str:
    base = {(r.tokens, r.batch): r for r in rows if r.setting == BASELINE and not r.error}
    lines = [
        "| T | batch | setting | time to first token | decode ms/token | peak GiB | KV cache GiB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.tokens // 1024}k | {r.batch} | {r.setting} | {r.error} | | | |")
            continue
        b = base.get((r.tokens, r.batch))
        ttft, dec, kv = f"{r.first_token_s:.2f} s", f"{r.decode_ms:.1f}", f"{r.kv_gib:.2f}"
        if b is not None and r is not b:
            ttft += f" ({b.first_token_s / r.first_token_s:.2f}x)"
            dec += f" ({b.decode_ms / r.decode_ms:.2f}x)"
            kv += f" ({100 * r.kv_gib / b.kv_gib:.0f}%)"
        lines.append(f"| {r.tokens // 1024}k | {r.batch} | {r.setting} | {ttft} | {dec} | {r.peak_gib:.1f} | {kv} |")
    return "\n".join(lines)


def tokens(text: str) -> list[int]:
    return [int(float(t[:-1]) * 1024) if t.endswith("k") else int(t) for t in text.split(",") if t]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=tokens, default=tokens("32k,128k"), help="prompt lengths T, batch 1")
    parser.add_argument("--batched", type=tokens, default=tokens("32k"), help="T values also run at --batch rows")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=128, help="decoded tokens timed after the first")
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--sinks", type=int, default=100)
    parser.add_argument("--tiny", action="store_true", help="a 4-layer model on the CPU (harness smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="also write bench_infer.md and .json here")
    args = parser.parse_args(argv)

    shape, full_layers = dict(QWEN3_4B), QWEN3_4B_FULL_LAYERS
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.tiny:
        shape.update(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
        shape.update(head_dim=16, intermediate_size=128, vocab_size=512)
        full_layers = [1]
    model = build_model(shape, device, dtype)
    rows_of = settings(shape["num_hidden_layers"], full_layers, args.window, args.sinks)
    runs = [(t, 1) for t in args.lengths] + [(t, args.batch) for t in args.batched]
    gen = torch.Generator().manual_seed(0)
    warm = torch.randint(1, shape["vocab_size"], (1, min(4096, min(args.lengths))), generator=gen).to(device)
    for name, swaa in rows_of.items():  # compile the kernels once, outside the timings
        run_row(model, name, swaa, warm, 4)
    rows = []
    for t, batch in runs:
        ids = torch.randint(1, shape["vocab_size"], (batch, t), generator=gen).to(device)
        for name, swaa in rows_of.items():
            try:
                rows.append(run_row(model, name, swaa, ids, args.new_tokens))
            except torch.OutOfMemoryError:
                rows.append(Row(name, t, batch, 0.0, 0.0, 0.0, 0.0, error="out of memory"))
            torch.cuda.empty_cache() if device == "cuda" else None
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    report = table(rows)
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_infer.md").write_text(report + "\n")
        (args.out / "bench_infer.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
