"""The adaptation experiment (experiments/adaptation/, docs/adaptation.md): evaluate a full-attention
model under the SWAA ladder, LoRA-train it under SWAA with the toolkit's trainer, evaluate
again, and report accuracy beside relative prefill cost (table + plot).

Stages after the data and pretraining ones (data.py, pretrain.py):
- `run_adaptation`: eval ladder without adapter -> SWAATrainer on the recipe -> eval ladder
  with the adapter (evaluate.py writes samples.jsonl / results.json / results.md for each);
- `write_report`: adds the prefill cost of each setting over the eval prompts
  (prefill_cost.py) and the accuracy per number of hops; writes results.json, table.md and
  the plot;
- `pack_base` / `unpack_base`: the pretrained base directory as a tar split into chunks small
  enough to come back from one device call, and back, so pretraining and adaptation can run
  as two calls.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections import defaultdict
from pathlib import Path

from transformers import TrainerCallback
from transformers.utils import logging

from experiments.adaptation.prefill_cost import relative_prefill_cost
from swaa_train.evaluate import EvalSetting, default_settings, run_evaluation
from swaa_train.recipe import load_recipe
from swaa_train.swaa_config import SWAAConfig

logger = logging.get_logger(__name__)

BASE_EVAL, ADAPTER_EVAL = "eval_base", "eval_adapter"


def ladder(swaa: SWAAConfig, num_layers: int, adapter: bool) -> list[EvalSetting]:
    """evaluate.py's ladder (full, naive SWA, + sinks, + FA decode, + interleaving) for the
    trained settings `swaa`, all with or all without the adapter."""
    return [s for s in default_settings(swaa, num_layers, has_adapter=True) if s.adapter == adapter]


class TimeBudget(TrainerCallback):
    """Stop training once `seconds` of wall-clock time have passed (checked after each step)."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.start > self.seconds:
            logger.info("Time budget of %.0f s reached at step %d: stopping", self.seconds, state.global_step)
            control.should_training_stop = True


def train_adapter(
    recipe_path: str,
    overrides: list[str] | None = None,
    time_budget_s: float | None = None,
    num_proc: int | None = None,
):
    """run.py's training run, with the rows tokenized in `num_proc` processes and an optional
    wall-clock budget; returns the trainer (adapter + swaa_config.json saved in output_dir)."""
    from swaa_train.run import build_trainer

    recipe, raw = load_recipe(recipe_path, [*(overrides or []), f"data.num_proc={num_proc or 'null'}"])
    trainer = build_trainer(recipe, raw)
    if time_budget_s:
        trainer.add_callback(TimeBudget(time_budget_s))
    trainer.train()
    trainer.save_model(recipe.training.output_dir)
    return trainer


def run_adaptation(
    recipe_path: str,
    eval_data: str,
    out_dir: str,
    overrides: list[str] | None = None,
    lora_time_budget_s: float | None = None,
    limit: int | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    num_proc: int | None = None,
    device: str | None = None,
) -> dict:
    """Ladder without adapter, LoRA training under the recipe's SWAA settings, ladder with the adapter."""
    import torch
    from transformers import AutoConfig

    device = device or ("cuda" if torch.cuda.is_available() else None)
    recipe, _ = load_recipe(recipe_path, overrides)
    base, adapter_dir = recipe.model.name_or_path, recipe.training.output_dir
    num_layers = AutoConfig.from_pretrained(base).num_hidden_layers
    out, timings = Path(out_dir), {}
    common = dict(limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size, dtype="bfloat16", device=device)
    start = time.monotonic()
    run_evaluation(base, eval_data, str(out / BASE_EVAL), settings=ladder(recipe.swaa, num_layers, False), **common)
    timings["eval_base_s"] = time.monotonic() - start
    start = time.monotonic()
    trainer = train_adapter(recipe_path, overrides, lora_time_budget_s, num_proc)
    timings["lora_s"] = time.monotonic() - start
    timings["lora_steps"] = trainer.state.global_step
    del trainer
    start = time.monotonic()
    run_evaluation(
        base,
        eval_data,
        str(out / ADAPTER_EVAL),
        adapter=adapter_dir,
        settings=ladder(recipe.swaa, num_layers, True),
        **common,
    )
    timings["eval_adapter_s"] = time.monotonic() - start
    timings = {k: round(v, 1) for k, v in timings.items()}
    (out / "adapt_timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    return timings


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
def prompt_lengths(eval_data: str, tokenizer_dir: str, limit: int | None = None) -> list[int]:
    """Tokens each eval prompt prefills: the prompt as one chat turn, as inference.generate renders it."""
    from transformers import AutoTokenizer

    from swaa_train.evaluate import load_eval_rows
    from swaa_train.inference import format_prompt

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = load_eval_rows(eval_data, limit)
    return [len(tokenizer(format_prompt(tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"]) for r in rows]


def _accuracy_by_hops(samples: Path, hops: list[int]) -> dict[str, dict[int, float]]:
    counts = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for line in samples.read_text().splitlines():
        record = json.loads(line)
        tally = counts[record["setting"]][hops[record["index"]]]
        tally[0] += record["correct"]
        tally[1] += 1
    return {s: {h: c / n for h, (c, n) in by.items()} for s, by in counts.items()}


def collect_results(
    out_dir: str, eval_data: str, tokenizer_dir: str, num_layers: int, limit: int | None = None
) -> list[dict]:
    """Rows of both ladders with prefill cost, accuracy per hop count and accuracy relative to full attention."""
    from swaa_train.evaluate import load_eval_rows

    lengths = prompt_lengths(eval_data, tokenizer_dir, limit)
    hops = [int(r.get("hops") or 1) for r in load_eval_rows(eval_data, limit)]
    rows = []
    for stage in (BASE_EVAL, ADAPTER_EVAL):
        folder = Path(out_dir) / stage
        if not (folder / "results.json").is_file():
            continue
        by_hops = _accuracy_by_hops(folder / "samples.jsonl", hops)
        for row in json.loads((folder / "results.json").read_text()):
            swaa = SWAAConfig.from_dict(row["swaa"])
            rows.append(
                {
                    **row,
                    "prefill_cost": relative_prefill_cost(lengths, swaa, num_layers),
                    "accuracy_by_hops": by_hops.get(row["setting"], {}),
                }
            )
    full = next((r["accuracy"] for r in rows if not r["adapter"] and r["swaa"]["sliding_window_size"] is None), None)
    for row in rows:
        row["relative_accuracy"] = row["accuracy"] / full if full else None
    return rows


def targets(rows: list[dict]) -> dict:
    """The issue's two claims: naive SWA < 30% of full attention; best adapter row >= 90% at cost < 50%."""

    def find(name, adapter):
        return next(
            (r for r in rows if r["setting"].removesuffix(" + adapter") == name and r["adapter"] == adapter), None
        )

    naive = find("naive SWA", False)
    cheap = [r for r in rows if r["adapter"] and r["prefill_cost"] < 0.5 and r["swaa"]["sliding_window_size"]]
    best = max(cheap, key=lambda r: r["accuracy"], default=None)
    return {
        "naive_swa_relative": naive and naive["relative_accuracy"],
        "naive_swa_below_30pct": bool(
            naive and naive["relative_accuracy"] is not None and naive["relative_accuracy"] < 0.3
        ),
        "best_adapter_setting": best and best["setting"],
        "best_adapter_relative": best and best["relative_accuracy"],
        "best_adapter_prefill_cost": best and best["prefill_cost"],
        "best_adapter_recovers_90pct": bool(
            best and best["relative_accuracy"] is not None and best["relative_accuracy"] >= 0.9
        ),
    }


def format_results_table(rows: list[dict]) -> str:
    lines = [
        "| setting | LoRA | attention | prefill cost | KV cache saved | accuracy | 1-hop | 2-hop | vs full attention |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        hop = lambda h, r=r: f"{100 * r['accuracy_by_hops'][h]:.1f}%" if h in r["accuracy_by_hops"] else "-"
        rel = f"{100 * r['relative_accuracy']:.0f}%" if r["relative_accuracy"] is not None else "-"
        lines.append(
            f"| {r['setting'].removesuffix(' + adapter')} | {'yes' if r['adapter'] else 'no'} | {r['describe']} | "
            f"{100 * r['prefill_cost']:.1f}% | {100 * r.get('kv_cache_saved', 0.0):.0f}% | "
            f"{100 * r['accuracy']:.1f}% ({r['correct']}/{r['total']}) | "
            f"{hop(1)} | {hop(2)} | {rel} |"
        )
    return "\n".join(lines)


SHORT_NAMES = {
    "full attention": "full",
    "naive SWA": "SWA",
    "SWA + sinks": "+sinks",
    "SWA + sinks + FA decode": "+FA dec",
    "SWA + sinks + FA decode + interleaving": "+interleave",
}


def plot_results(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Accuracy against relative prefill cost, with and without the LoRA adapter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=130)
    for adapter, marker, color, label in ((False, "o", "tab:gray", "no LoRA"), (True, "^", "tab:blue", "SWAA LoRA")):
        points = [r for r in rows if r["adapter"] == adapter]
        ax.scatter(
            [100 * r["prefill_cost"] for r in points],
            [100 * r["accuracy"] for r in points],
            marker=marker,
            color=color,
            s=60,
            label=label,
            zorder=3,
        )
        placed: list[tuple[float, float]] = []
        for r in points:
            name = SHORT_NAMES.get(r["setting"].removesuffix(" + adapter"), r["setting"])
            x, y = 100 * r["prefill_cost"], 100 * r["accuracy"]
            # Points of nearly equal cost and accuracy (e.g. SWA and + sinks) get stacked labels.
            stack = sum(abs(x - px) < 6 and abs(y - py) < 5 for px, py in placed)
            placed.append((x, y))
            offset = -12 - 9 * stack if adapter else 5 + 9 * stack
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, offset), fontsize=8, color=color)
    full = next((r for r in rows if not r["adapter"] and r["swaa"]["sliding_window_size"] is None), None)
    if full:
        ax.axhline(100 * full["accuracy"], ls="--", lw=0.8, color="k", label="full attention")
        ax.axhline(90 * full["accuracy"], ls=":", lw=0.8, color="tab:green", label="90% of full attention")
    ax.axvline(50, ls=":", lw=0.8, color="tab:red", label="50% prefill cost")
    ax.set_xlabel("relative prefill cost (% of full causal attention pairs)")
    ax.set_ylabel("accuracy on held-out questions (%)")
    ax.set_xlim(0, 105)
    ax.set_ylim(-3, 103)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(
    out_dir: str,
    eval_data: str,
    tokenizer_dir: str,
    num_layers: int,
    plot_path: str | Path,
    limit: int | None = None,
    title: str = "",
    extra: dict | None = None,
) -> dict:
    """results.json (rows, targets, `extra` and adapt_timings.json if present) and table.md in
    out_dir, and the plot at plot_path."""
    rows = collect_results(out_dir, eval_data, tokenizer_dir, num_layers, limit)
    out = Path(out_dir)
    timings = out / "adapt_timings.json"
    report = {"rows": rows, "targets": targets(rows), **(extra or {})}
    if timings.is_file():
        report["adapt_timings"] = json.loads(timings.read_text())
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "table.md").write_text(format_results_table(rows) + "\n")
    plot_results(rows, plot_path, title)
    return report


# ------------------------------------------------------------------------------------------
# The base model in chunks (pretraining and adaptation as two device calls)
# ------------------------------------------------------------------------------------------
CHUNK_PREFIX, CHUNK_MANIFEST = "base.tar.", "base.tar.json"


def pack_base(base_dir: str | Path, out_dir: str | Path, chunk_mib: float = 15.0, max_chunks: int = 6) -> list[Path]:
    """Write base_dir's files as one tar split into out_dir/base.tar.00, .01, ... of at most
    `chunk_mib` MiB each, plus base.tar.json (chunk sizes and sha256). Raises if more than
    `max_chunks` chunks would be needed (pretrain.py already saves the weights in bf16)."""
    base, out = Path(base_dir), Path(out_dir)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            tar.add(path, arcname=str(path.relative_to(base)))
    data, size = buffer.getvalue(), int(chunk_mib * 2**20)
    count = -(-len(data) // size)
    if count > max_chunks:
        raise ValueError(
            f"{base} packs to {len(data) / 2**20:.1f} MiB: {count} chunks of {chunk_mib} MiB, more than {max_chunks}"
        )
    out.mkdir(parents=True, exist_ok=True)
    chunks, manifest = [], []
    for k in range(count):
        piece = data[k * size : (k + 1) * size]
        chunks.append(out / f"{CHUNK_PREFIX}{k:02d}")
        chunks[-1].write_bytes(piece)
        manifest.append({"name": chunks[-1].name, "bytes": len(piece), "sha256": hashlib.sha256(piece).hexdigest()})
    (out / CHUNK_MANIFEST).write_text(json.dumps({"chunks": manifest}, indent=1) + "\n")
    logger.info("Packed %s into %d chunks (%.1f MiB) in %s", base, count, len(data) / 2**20, out)
    return [*chunks, out / CHUNK_MANIFEST]


def unpack_base(chunk_dir: str | Path, base_dir: str | Path) -> Path:
    """Rebuild the base directory that pack_base packed into chunk_dir, after checking every
    chunk against base.tar.json."""
    chunk_dir, base = Path(chunk_dir), Path(base_dir)
    manifest = json.loads((chunk_dir / CHUNK_MANIFEST).read_text())["chunks"]
    pieces = []
    for entry in manifest:
        piece = (chunk_dir / entry["name"]).read_bytes()
        if len(piece) != entry["bytes"] or hashlib.sha256(piece).hexdigest() != entry["sha256"]:
            raise ValueError(f"{chunk_dir / entry['name']} does not match {CHUNK_MANIFEST}: damaged or incomplete")
        pieces.append(piece)
    base.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(b"".join(pieces)), mode="r") as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12 / 3.11.4
        tar.extractall(base, **safe)
    logger.info("Unpacked %d chunks from %s into %s", len(manifest), chunk_dir, base)
    return base
