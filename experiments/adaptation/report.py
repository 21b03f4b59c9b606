"""Report of the multi-seed study: markdown tables, plots with error bars, the targets.

    write_study_report(study, rows, out_dir) -> out_dir/summary.json, report.md, ladder.png,
                                                 bins.png, tradeoff.png

Every number is a mean over seeds with two 95% intervals (stats.py): "t" across seeds,
"boot" a bootstrap over questions. The recovery sweep varies one factor of the KV arm
without FA decode (study.default_arms) at a time, so that arm is every factor's reference. Error bars in the plots are the t interval (the bootstrap
one where there is a single seed).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from experiments.adaptation.stats import NO_LORA, REFERENCE, compare, evaluate_targets, find, summarize
from experiments.adaptation.study import PROBED, RUN_STRIDE, StudyConfig, setting_name, training_curve
from swaa_train.swaa_config import SWAAConfig


def pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def cell(record: dict | None, relative: bool = False) -> str:
    """ "mean [t low, high; boot low, high]" of a summary record (percent), or "-"."""
    if record is None:
        return "-"
    prefix = "relative_" if relative else ""
    mean = record["relative" if relative else "mean"]
    if mean is None:
        return "-"
    t, boot = record[f"{prefix}t_interval"], record[f"{prefix}bootstrap_interval"]
    bound = lambda v: "-" if v is None else f"{100 * v:.0f}"
    return f"{pct(mean)} [t {bound(t[0])}, {bound(t[1])}; boot {bound(boot[0])}, {bound(boot[1])}]"


def short_cell(record: dict | None) -> str:
    """ "mean ± half-width of the t interval" (the bootstrap one with a single seed)."""
    if record is None:
        return "-"
    low, high = error_bounds(record)
    return f"{100 * record['mean']:.0f} ± {50 * (high - low):.0f}" if low is not None else f"{100 * record['mean']:.0f}"


def error_bounds(record: dict) -> tuple[float | None, float | None]:
    low, high = record["t_interval"]
    return (low, high) if low is not None else tuple(record["bootstrap_interval"])


def _names(study: StudyConfig, num_layers: int) -> dict[str, list[str]]:
    ladder = [setting_name(s) for s in study.ladder(num_layers)]
    return {
        "ladder": ladder,
        "naive": setting_name(SWAAConfig(study.window)),
        "fa_decode": setting_name(study.fa_decode_setting()),
    }


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------
def ladder_table(summary: list[dict], ladder: list[str], loras: list[str]) -> str:
    lines = [
        "| setting | LoRA | all questions | in range | beyond range | vs full (in range) | KV saved | prefill cost |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for who in (NO_LORA, *loras):
        for name in ladder:
            rec = {s: find(summary, who, name, s) for s in ("all", "in range", "beyond range")}
            if rec["all"] is None:
                continue
            lines.append(
                f"| {name} | {who} | {cell(rec['all'])} | {cell(rec['in range'])} | {cell(rec['beyond range'])} | "
                f"{cell(rec['in range'], relative=True)} | {pct(rec['all']['kv_cache_saved'], 0)} | "
                f"{pct(rec['all']['prefill_cost'])} |"
            )
    return "\n".join(lines)


def bins_table(summary: list[dict], keys: list[tuple[str, str]], bins: list[str]) -> str:
    lines = ["| setting | LoRA | " + " | ".join(bins) + " |", "| --- | --- |" + " --- |" * len(bins)]
    for lora, name in keys:
        if find(summary, lora, name) is None:
            continue
        lines.append(
            f"| {name} | {lora} | " + " | ".join(short_cell(find(summary, lora, name, b)) for b in bins) + " |"
        )
    return "\n".join(lines)


def arm_rows(summary: list[dict], study: StudyConfig, subset: str = "in range") -> list[dict]:
    """For each arm: its own setting with its LoRA, without LoRA, and with its LoRA + FA decode."""
    out = []
    for arm in study.arms:
        own = study.arm_label(arm)
        with_fa = study.arm_label(dataclasses.replace(arm, swaa=dataclasses.replace(arm.swaa, force_fa_decode=True)))
        out.append(
            {
                "arm": arm,
                "setting": own,
                "lora": find(summary, arm.name, own, subset),
                "base": find(summary, NO_LORA, own, subset),
                "lora_fa": find(summary, arm.name, with_fa, subset) if with_fa != own else None,
            }
        )
    return out


def base_on_seeds(rows: list[dict], setting: str, seeds: list[int], resamples: int = 2000) -> dict | None:
    """The summary record (in range) of the base under `setting` on `seeds` alone."""
    keep = {(NO_LORA, setting), REFERENCE}
    chosen = [x for x in rows if x["seed"] in seeds and (x["lora"], x["setting"]) in keep]
    return find(summarize(chosen, resamples=resamples), NO_LORA, setting, "in range")


def arms_table(summary: list[dict], study: StudyConfig, rows: list[dict], resamples: int = 2000) -> str:
    """Each LoRA under its own setting, beside the base under it on the same bases (a pooled
    report may hold bases that a LoRA was not trained on); "what the LoRA adds" is with minus
    without, paired by seed and question (stats.compare)."""
    lines = [
        "| LoRA | trained under | arm | steps | KV saved | prefill cost | no LoRA | with its LoRA | "
        "what the LoRA adds | vs full | its LoRA + FA decode |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in arm_rows(summary, study):
        arm, rec = r["arm"], r["lora"]
        if rec is None:
            continue
        steps, base = rec["lora_steps"], r["base"]
        if base is not None and base["seeds"] != rec["seeds"]:
            base = base_on_seeds(rows, r["setting"], rec["seeds"], resamples)
        added = compare(rows, (arm.name, r["setting"]), (NO_LORA, r["setting"]), resamples=resamples)
        lines.append(
            f"| {arm.name} | {r['setting']} | {arm.group}{f': {arm.factor} = {arm.level}' if arm.factor else ''} | "
            f"{min(steps)}-{max(steps)} | {pct(rec['kv_cache_saved'], 0)} | {pct(rec['prefill_cost'])} | "
            f"{cell(base)} | {cell(rec)} | {cell(added)} | {cell(rec, relative=True)} | {cell(r['lora_fa'])} |"
        )
    return "\n".join(lines)


def _per_seed(record: dict | None) -> dict[int, float]:
    return dict(zip(record["seeds"], record["per_seed"])) if record else {}


def bases_table(summary: list[dict], pretrain_logs: dict[tuple[int, str], list[dict]]) -> str:
    """Per seed: its pretraining's steps and its held-out checks (exact answers to short
    questions not trained on, pretrain.heldout_exact) at the end of the short-prompt phase, at
    their lowest after the switch to long prompts, and at the last check, beside the base's full
    attention on the study's questions. A base whose check is low when the short phase ends has
    not learnt the lookup there, and the long phase starts it again from about zero."""
    full = _per_seed(find(summary, *REFERENCE, "in range"))
    lines = [
        "| seed | pretraining steps (last logged) | held-out exact at the end of the short phase (step) | "
        "lowest after the switch to long prompts (step) | at its last check (step) | full attention, in range |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    at = lambda check: f"{pct(check['heldout_exact'])} ({check['step']})" if check else "-"  # noqa: E731
    for seed in sorted({s for s, _ in pretrain_logs} | set(full)):
        log = pretrain_logs.get((seed, "pretrain_log"), [])
        checks = [r for r in log if "heldout_exact" in r]
        short = [r for r in checks if r.get("phase") == 0]
        long = [r for r in checks if r.get("phase") == 1]
        lowest = min(long, key=lambda r: r["heldout_exact"]) if long else None
        steps = log[-1]["step"] if log else "-"
        lines.append(
            f"| {seed} | {steps} | {at(short[-1] if short else None)} | {at(lowest)} | "
            f"{at(checks[-1] if checks else None)} | {pct(full.get(seed))} |"
        )
    return "\n".join(lines)


def lora_training_table(summary: list[dict], study: StudyConfig, lora_logs: dict[tuple[int, str], list[dict]]) -> str:
    """Per LoRA and seed: its training loss at the start and the end (study.training_curve), its
    largest gradient norm, and its own setting's accuracy without and with it (in range)."""
    lines = [
        "| LoRA | seed | loss, first logs | loss, last logs | largest grad norm | no LoRA | with its LoRA |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in arm_rows(summary, study):
        base, lora = _per_seed(r["base"]), _per_seed(r["lora"])
        for seed in sorted(lora):
            curve = training_curve(lora_logs.get((seed, r["arm"].name), []))
            start, end, norm = (
                f"{curve[k]:.4g}" if k in curve else "-"
                for k in ("lora_loss_start", "lora_loss_end", "lora_grad_norm_max")
            )
            lines.append(
                f"| {r['arm'].name} | {seed} | {start} | {end} | {norm} | {pct(base.get(seed))} | {pct(lora[seed])} |"
            )
    return "\n".join(lines)


def placement_table(summary: list[dict], rows: list[dict]) -> str:
    """The base (no LoRA) under every setting without FA decode that keeps some layers full, the
    probed one included: per seed, mean and relative to full attention (in range), and the layers
    the probe chose for each seed."""
    records = [
        r
        for r in summary
        if r["lora"] == NO_LORA
        and r["subset"] == "in range"
        and r["swaa"]["sliding_window_size"] is not None
        and not r["swaa"]["force_fa_decode"]
        and (r["swaa"]["non_sliding_layers"] or PROBED in r["setting"])
    ]
    if not records:
        return "No base rows without FA decode."
    seeds = sorted({s for r in records for s in r["seeds"]})
    lines = [
        f"| setting | KV saved | {' | '.join(f'seed {s}' for s in seeds)} | mean | vs full |",
        "| --- | --- |" + " --- |" * (len(seeds) + 2),
    ]
    for r in sorted(records, key=lambda r: -r["kv_cache_saved"]):
        by_seed = dict(zip(r["seeds"], r["per_seed"]))
        per_seed = " | ".join(pct(by_seed[s]) if s in by_seed else "-" for s in seeds)
        lines.append(
            f"| {r['setting']} | {pct(r['kv_cache_saved'], 0)} | {per_seed} | {cell(r)} | {cell(r, relative=True)} |"
        )
    chosen = {r["seed"]: r["probe_layers"] for r in rows if r.get("probe_layers") is not None}
    if chosen:
        lines.append(
            "\nLayers the probe chose (on LoRA training rows, not these questions): "
            + "; ".join(f"seed {s}: {', '.join(map(str, layers))}" for s, layers in sorted(chosen.items()))
            + "."
        )
    return "\n".join(lines)


def sweep_table(summary: list[dict], rows: list[dict], study: StudyConfig, resamples: int = 2000) -> str:
    """The recovery sweep: each arm that varies one factor of its reference arm (the study's
    sweep_reference unless the arm names another), its accuracy with its LoRA under its own
    setting, and the paired difference to its reference (in range)."""
    reference = next(a for a in study.arms if a.name == study.sweep_reference)
    lines = [
        "| factor | level | LoRA | setting | with its LoRA | minus its reference | KV saved | prefill cost |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm in [reference, *(a for a in study.arms if a.factor and a is not reference)]:
        key = (arm.name, study.arm_label(arm))
        rec = find(summary, *key, "in range")
        if rec is None:
            continue
        if arm is reference:
            diff_cell = "reference"
        else:
            other = study.reference_of(arm)
            diff = compare(rows, key, (other.name, study.arm_label(other)), resamples=resamples)
            diff_cell = f"{cell(diff)} (vs {other.name})"
        lines.append(
            f"| {arm.factor or '-'} | {arm.level or '-'} | {arm.name} | {key[1]} | {cell(rec)} | {diff_cell} | "
            f"{pct(rec['kv_cache_saved'], 0)} | {pct(rec['prefill_cost'])} |"
        )
    return "\n".join(lines)


def targets_table(targets: list[dict]) -> str:
    word = {True: "**met**", False: "**missed**", None: "not run"}
    sure = {True: "both on the verdict's side", False: "an interval crosses the threshold", None: ""}
    lines = ["| target | verdict | intervals | evidence |", "| --- | --- | --- | --- |"]
    verdict = lambda t: "not decided" if t["evidence"].startswith("not decided") else word[t["met"]]  # noqa: E731
    lines += [f"| {t['target']} | {verdict(t)} | {sure[t['interval_agrees']]} | {t['evidence']} |" for t in targets]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errorbar(ax, x, records, **kwargs):
    means = [100 * r["mean"] for r in records]
    bounds = [error_bounds(r) for r in records]
    yerr = [
        [m - 100 * (b[0] if b[0] is not None else m / 100) for m, b in zip(means, bounds)],
        [100 * (b[1] if b[1] is not None else m / 100) - m for m, b in zip(means, bounds)],
    ]
    return ax.errorbar(x, means, yerr=yerr, capsize=3, **kwargs)


def plot_ladder(summary: list[dict], ladder: list[str], loras: list[str], path: Path, subset: str = "all") -> Path:
    """Accuracy of the ladder without and with each LoRA of `loras` that has rows on it (a bar per
    rung it was evaluated on): bars, t interval, bootstrap interval, seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=130)
    groups = [w for w in (NO_LORA, *loras) if any(find(summary, w, name, subset) for name in ladder)]
    width = 0.76 / max(len(groups), 1)
    colors = ("tab:gray", "tab:blue", "tab:green", "tab:orange", "tab:purple")
    for k, who in enumerate(groups):
        records = [find(summary, who, name, subset) for name in ladder]
        xs = [i + (k - (len(groups) - 1) / 2) * width for i, r in enumerate(records) if r]
        records = [r for r in records if r]
        color = colors[k % len(colors)]
        ax.bar(xs, [100 * r["mean"] for r in records], width=width * 0.95, color=color, alpha=0.6, label=f"LoRA: {who}")
        with_t = [(x, r) for x, r in zip(xs, records) if r["t_interval"][0] is not None]  # 2+ seeds
        if with_t:
            _errorbar(ax, [x for x, _ in with_t], [r for _, r in with_t], fmt="none", ecolor="k", lw=1.2)
        for x, r in zip(xs, records):
            low, high = r["bootstrap_interval"]
            ax.plot([x + 0.08, x + 0.08], [100 * low, 100 * high], color="tab:red", lw=2, alpha=0.7)
            ax.scatter([x - 0.08] * len(r["per_seed"]), [100 * v for v in r["per_seed"]], s=8, color="k", zorder=3)
    ax.plot([], [], color="tab:red", lw=2, label="95% bootstrap over questions")
    ax.errorbar([], [], yerr=[], fmt="none", ecolor="k", capsize=3, label="95% t interval over seeds")
    ax.set_xticks(range(len(ladder)), [n.replace(" + ", "\n+ ") for n in ladder], fontsize=6)
    ax.set_ylabel(f"accuracy, {subset} questions (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def plot_bins(summary: list[dict], keys: list[tuple[str, str]], length_bins, depth_bins, path: Path) -> Path:
    """Accuracy per length bin and per depth bin, one line (with error bars) per (LoRA, setting)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2 + 0.12 * len(keys)), dpi=130, sharey=True)
    for ax, bins, title in ((axes[0], length_bins, "prompt length (tokens)"), (axes[1], depth_bins, "fact depth")):
        for k, (lora, name) in enumerate(keys):
            records = [find(summary, lora, name, b) for b in bins]
            if not all(records):
                continue
            xs = [i + 0.04 * (k - len(keys) / 2) for i in range(len(bins))]
            label = name if lora == NO_LORA else f"{name} + LoRA {lora}"
            _errorbar(ax, xs, records, marker="o", ms=4, lw=1, label=label, ls="-" if lora == NO_LORA else "--")
        ax.set_xticks(range(len(bins)), bins, fontsize=8)
        ax.set_xlabel(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_ylim(-3, 105)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.01 + 0.035 * ((len(labels) + 1) // 2), 1, 1))
    return _save(fig, plt, path, layout=False)


def plot_tradeoff(summary: list[dict], study: StudyConfig, path: Path, subset: str = "in range") -> Path:
    """Accuracy of every setting without LoRA and of each arm's setting with its LoRA, against KV
    cache saved and against prefill cost."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=130, sharey=True)
    rows = arm_rows(summary, study, subset)
    full = find(summary, *REFERENCE, subset)
    bases = [r for r in summary if r["lora"] == NO_LORA and r["subset"] == subset and r is not full]
    colors = {"ladder": "tab:blue", "kv": "tab:orange", "sweep": "tab:green"}
    for ax, key, label in (
        (axes[0], "kv_cache_saved", "KV cache saved (%)"),
        (axes[1], "prefill_cost", "prefill cost (%)"),
    ):
        seen: dict[float, int] = {}

        def place(x: float, seen: dict = seen) -> float:  # points at the same cost side by side
            shift = 1.2 * seen.get(round(x), 0)
            seen[round(x)] = seen.get(round(x), 0) + 1
            return x + shift

        for rec in bases:
            x = place(100 * rec[key])
            _errorbar(ax, [x], [rec], fmt="o", color="tab:gray", ms=4, alpha=0.8)
            short = rec["setting"].replace(" + ", "+").replace("full layers ", "L")
            ax.annotate(short, (x, 100 * rec["mean"]), textcoords="offset points", xytext=(3, -6), fontsize=4.5)
        for r in rows:
            if r["lora"] is None:
                continue
            x = place(100 * r["lora"][key])
            _errorbar(ax, [x], [r["lora"]], fmt="^", color=colors[r["arm"].group], ms=5)
            y = 100 * r["lora"]["mean"]
            ax.annotate(r["arm"].name, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=5.5, rotation=30)
        points = [(100 * r["lora"][key], 100 * r["lora"]["mean"]) for r in rows if r["lora"]]
        frontier = pareto(points + [(100 * r[key], 100 * r["mean"]) for r in bases], key)
        if full:
            frontier = pareto([(100 * full[key], 100 * full["mean"]), *frontier], key)
        ax.plot(
            *zip(*frontier),
            color="k",
            lw=0.8,
            alpha=0.5,
            drawstyle="steps-pre" if key == "kv_cache_saved" else "steps-post",
        )
        if full:
            ax.axhline(100 * full["mean"], ls="--", lw=0.8, color="k")
            ax.axhline(50 * full["mean"], ls=":", lw=0.8, color="tab:red")
        ax.set_xlabel(label)
        ax.set_xlim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].axvline(50, ls=":", lw=0.8, color="tab:red")
    axes[0].set_ylabel(f"accuracy, {subset} questions (%)")
    axes[0].set_ylim(-3, 105)
    handles = [
        axes[0].scatter([], [], marker="o", color="tab:gray", label="no LoRA"),
        *(axes[0].scatter([], [], marker="^", color=c, label=f"LoRA ({g})") for g, c in colors.items()),
        axes[0].plot([], [], ls="--", color="k", label="full attention")[0],
        axes[0].plot([], [], ls=":", color="tab:red", label="50% of full / 50% KV saved")[0],
    ]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, plt, path, layout=False)


def pareto(points: list[tuple[float, float]], key: str) -> list[tuple[float, float]]:
    """The points no other point beats: more KV saved (or less prefill cost) at no lower accuracy."""
    better = (lambda a, b: a >= b) if key == "kv_cache_saved" else (lambda a, b: a <= b)
    dominates = lambda q, p: better(q[0], p[0]) and q[1] >= p[1] and tuple(q) != tuple(p)
    return sorted({tuple(p) for p in points if not any(dominates(q, p) for q in points)})


def _save(fig, plt, path: Path, layout: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------
# The whole report
# ------------------------------------------------------------------------------------------
def _bases(seeds: list[int]) -> str:
    """ "3 seeds (0, 1, 2)", or for several runs (study.read_results) "6 bases of 2 runs (...)"."""
    runs = sorted({s // RUN_STRIDE for s in seeds})
    if len(runs) == 1 and runs[0] == 0:
        return f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"
    return (
        f"{len(seeds)} bases of {len(runs)} runs ({', '.join(map(str, seeds))}: "
        f"run k's seed s is base k*{RUN_STRIDE}+s)"
    )


def _question_sets(rows: list[dict]) -> str:
    """ " (question set 1)" for rows of a set other than 0 (StudyConfig.eval_set), else ""."""
    sets = sorted({r.get("eval_set", 0) for r in rows})
    return "" if sets == [0] else f" (question set{'s' * (len(sets) > 1)} {', '.join(map(str, sets))})"


def write_study_report(
    study: StudyConfig,
    rows: list[dict],
    out_dir: str | Path,
    *,
    resamples: int = 2000,
    plot_prefix: str = "",
    logs: dict[tuple[int, str], list[dict]] | None = None,
) -> dict:
    """summary.json (every record and the targets), report.md and the three plots in out_dir;
    `logs` (study.read_seed_logs: the pretraining and LoRA logs) add the bases' and the LoRAs'
    training tables."""
    logs = logs or {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows, resamples=resamples)
    num_layers = rows[0]["num_layers"]
    names = _names(study, num_layers)
    lora = study.ladder_arm.name
    ladder_loras = [lora, *(a.name for a in study.fa_decode_arms)]
    targets = evaluate_targets(
        summary,
        lora,
        names["fa_decode"],
        names["naive"],
        min_seeds=len(study.seeds),
        depth_bins=tuple(study.depth_bins),
        other_fa_decode_loras=tuple(a.name for a in study.fa_decode_arms),
    )
    keys = [(NO_LORA, n) for n in names["ladder"]] + [(lora, n) for n in names["ladder"][3:]]
    keys += [(a.name, n) for a in study.fa_decode_arms for n in (names["ladder"][0], names["fa_decode"])]
    keys += [(NO_LORA, study.arm_label(a)) for a in study.arms if a.group == "kv"]
    keys += [(a.name, study.arm_label(a)) for a in study.arms if a.group == "kv"]
    keys += [(NO_LORA, r["setting"]) for r in summary if r["lora"] == NO_LORA and PROBED in r["setting"]]
    keys = list(dict.fromkeys(keys))
    # The plot: full attention, naive SWA, FA decode without and with its LoRA, the KV arms with their LoRAs.
    plotted = [k for k in keys if k[1] in (names["ladder"][0], names["naive"], names["fa_decode"]) or k[0] != NO_LORA]
    length_bins, depth_bins = list(study.length_bins), list(study.depth_bins)
    seeds = sorted({r["seed"] for r in rows})
    questions = len({r["index"] for r in rows})
    plots = {
        "ladder": plot_ladder(summary, names["ladder"], ladder_loras, out / f"{plot_prefix}ladder.png"),
        "bins": plot_bins(summary, plotted, length_bins, depth_bins, out / f"{plot_prefix}bins.png"),
        "tradeoff": plot_tradeoff(summary, study, out / f"{plot_prefix}tradeoff.png"),
    }
    report = "\n\n".join(
        [
            f"# Adaptation study: {_bases(seeds)} x {questions} questions{_question_sets(rows)}",
            "Each cell: mean over seeds (t: 95% t interval over seeds; boot: 95% bootstrap over questions).",
            "## Targets (in-range questions)\n\n" + targets_table(targets),
            "## The ladder, without and with the FA-decode LoRAs (each on the rungs it was evaluated on)\n\n"
            + ladder_table(summary, names["ladder"], ladder_loras),
            f"![ladder]({plots['ladder'].name})",
            "## Per length bin and per depth bin (mean ± half the t interval, %; bootstrap intervals in summary.json)\n\n"
            + bins_table(summary, keys, length_bins + depth_bins),
            f"![bins]({plots['bins'].name})",
            "## Which layers keep full attention, without FA decode and without LoRA (in-range questions)\n\n"
            + placement_table(summary, rows),
            "## Every LoRA under its own setting (in-range questions)\n\n"
            + arms_table(summary, study, rows, resamples),
            "## The bases and the LoRAs, seed by seed\n\n"
            + bases_table(summary, {k: v for k, v in logs.items() if k[1] == "pretrain_log"})
            + "\n\n"
            + lora_training_table(summary, study, {k: v for k, v in logs.items() if k[1] != "pretrain_log"}),
            "## Recovery sweep without FA decode (in-range questions; differences paired by seed and question)\n\n"
            + sweep_table(summary, rows, study, resamples),
            f"![tradeoff]({plots['tradeoff'].name})",
        ]
    )
    (out / "report.md").write_text(report + "\n")
    result = {"seeds": seeds, "questions": questions, "targets": targets, "summary": summary}
    (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
