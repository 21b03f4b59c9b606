"""Statistics of the multi-seed study (study.py): accuracy of every setting as a mean over seeds
with two 95% intervals, on all questions and on each length and depth bin, and the targets.

Two intervals, because two things vary:
- across seeds (pretraining and LoRA): a Student t interval over the per-seed accuracies,
  mean +- t(0.975, n - 1) * sd / sqrt(n); it needs at least two seeds;
- across questions: a percentile bootstrap that resamples the questions (the same
  resampled questions for every seed and for the reference, so ratios are paired) and
  recomputes the mean over seeds.

t intervals are cut to [0, 1] for accuracies, at 0 for ratios. Accuracy relative to full
attention is taken seed by seed (the full-attention model of the
same pretraining seed), so its t interval is over per-seed ratios; its bootstrap resamples
questions for both numerator and denominator.

Input: the study's per-question rows (study.py writes them; one per seed, LoRA, setting and
question, tagged with the question's bins and prompt length). Nothing here needs a model.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from experiments.adaptation.prefill_cost import kv_cache_saved, relative_prefill_cost
from swaa_train.swaa_config import SWAAConfig

LEVEL = 0.95
NO_LORA = "none"
REFERENCE = (NO_LORA, "full attention")
# What a (LoRA, setting) row carries besides its answers: its SWAA config, the model's layers,
# its place in the study (group, recovery factor and level) and the setting its LoRA was trained under.
META = ("swaa", "num_layers", "group", "factor", "level", "lora_setting")


# ------------------------------------------------------------------------------------------
# Student t
# ------------------------------------------------------------------------------------------
def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p (bisection on t_cdf)."""
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"need 0 < p < 1 and df >= 1, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return 0.5 * (low + high)


def t_interval(values: list[float], level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the t interval of the mean of `values`; no interval under two values."""
    n = len(values)
    if n == 0:
        return math.nan, None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


# ------------------------------------------------------------------------------------------
# Bootstrap over questions
# ------------------------------------------------------------------------------------------
def resample_indices(num_questions: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, num_questions) question indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, num_questions, size=(resamples, num_questions))


def bootstrap_interval(
    correct: np.ndarray,
    reference: np.ndarray | None = None,
    *,
    level: float = LEVEL,
    resamples: int = 2000,
    seed: int = 0,
    indices: np.ndarray | None = None,
) -> tuple[float | None, float | None]:
    """Percentile interval of the mean accuracy over seeds, resampling questions.

    `correct`: (seeds, questions) of 0/1. With `reference` (same shape: the full-attention
    model of each seed), the interval of the ratio of the two means, the same questions drawn
    for both. `indices` (resample_indices) lets several settings share their draws.
    """
    correct = np.asarray(correct, dtype=float)
    if correct.size == 0:
        return None, None
    if indices is None:
        indices = resample_indices(correct.shape[1], resamples, seed)
    stat = correct.sum(axis=0)[indices].sum(axis=1)
    if reference is not None:
        denominator = np.asarray(reference, dtype=float).sum(axis=0)[indices].sum(axis=1)
        stat = np.divide(stat, denominator, out=np.full_like(stat, np.nan), where=denominator > 0)
        stat = stat[~np.isnan(stat)]
        if stat.size == 0:
            return None, None
    else:
        stat = stat / correct.size
    low, high = np.quantile(stat, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def bootstrap_difference(
    first: np.ndarray, second: np.ndarray, *, level: float = LEVEL, indices: np.ndarray
) -> tuple[float, float]:
    """Percentile interval of mean(first) - mean(second), both (seeds, questions) of 0/1 over the
    same seeds and questions, the same questions drawn for both."""
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    stat = (first.sum(axis=0)[indices].sum(axis=1) - second.sum(axis=0)[indices].sum(axis=1)) / first.size
    low, high = np.quantile(stat, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


# ------------------------------------------------------------------------------------------
# Aggregation
# ------------------------------------------------------------------------------------------
def subsets(questions: dict[int, dict]) -> dict[str, list[int]]:
    """Question indices of every reported subset: all, in/beyond the training range, each
    length bin, each depth bin (bins in their order of appearance)."""
    out: dict[str, list[int]] = {"all": sorted(questions)}
    out["in range"] = [i for i in out["all"] if questions[i]["in_range"]]
    out["beyond range"] = [i for i in out["all"] if not questions[i]["in_range"]]
    for key in ("length_bin", "depth_bin"):
        for i in out["all"]:
            out.setdefault(questions[i][key], []).append(i)
    return {name: indices for name, indices in out.items() if indices}


def collect(rows: list[dict]) -> tuple[dict, dict, dict]:
    """(correct[(lora, setting)][seed][index], meta[(lora, setting)], questions[index]) from study rows."""
    correct: dict = defaultdict(lambda: defaultdict(dict))
    meta: dict = {}
    questions: dict = {}
    for row in rows:
        key = (row["lora"], row["setting"])
        correct[key][row["seed"]][row["index"]] = int(bool(row["correct"]))
        info = meta.setdefault(key, {k: row.get(k) for k in META})
        info.setdefault("lora_steps", {})[row["seed"]] = row.get("lora_steps", 0)
        questions.setdefault(
            row["index"], {k: row[k] for k in ("length_bin", "depth_bin", "in_range", "hops", "prompt_tokens")}
        )
    return correct, meta, questions


def _clip(interval: tuple, low: float, high: float | None) -> tuple:
    """A t interval cut to the values the quantity can take (an accuracy lies in [0, 1])."""
    mean, a, b = interval
    if a is None:
        return interval
    return mean, max(a, low), b if high is None else min(b, high)


def _matrix(by_seed: dict, seeds: list[int], indices: list[int]) -> np.ndarray:
    return np.array([[by_seed[s][i] for i in indices] for s in seeds], dtype=float)


def summarize(rows: list[dict], *, level: float = LEVEL, resamples: int = 2000, seed: int = 0) -> list[dict]:
    """One record per (LoRA, setting, subset): per-seed accuracies, mean, t and bootstrap
    intervals, the same relative to full attention without LoRA, KV cache saved and prefill
    cost over the subset's prompts."""
    correct, meta, questions = collect(rows)
    groups = subsets(questions)
    draws = {name: resample_indices(len(ix), resamples, seed) for name, ix in groups.items()}
    reference = correct.get(REFERENCE)
    out = []
    for key, by_seed in correct.items():
        info = meta[key]
        swaa = SWAAConfig.from_dict(info["swaa"])
        for name, wanted in groups.items():
            seeds = sorted(s for s in by_seed if all(i in by_seed[s] for i in wanted))
            if not seeds:
                continue
            matrix = _matrix(by_seed, seeds, wanted)
            per_seed = matrix.mean(axis=1).tolist()
            mean, t_low, t_high = _clip(t_interval(per_seed, level), 0.0, 1.0)
            boot = bootstrap_interval(matrix, level=level, indices=draws[name])
            record = {
                "lora": key[0],
                "setting": key[1],
                "subset": name,
                "seeds": seeds,
                "questions": len(wanted),
                "per_seed": per_seed,
                "mean": mean,
                "t_interval": [t_low, t_high],
                "bootstrap_interval": list(boot),
                **{k: info[k] for k in META},
                "lora_steps": [info["lora_steps"][s] for s in seeds],
                "kv_cache_saved": kv_cache_saved(
                    [questions[i]["prompt_tokens"] for i in wanted], swaa, info["num_layers"]
                ),
                "prefill_cost": relative_prefill_cost(
                    [questions[i]["prompt_tokens"] for i in wanted], swaa, info["num_layers"]
                ),
            }
            record.update(_relative(by_seed, reference, seeds, wanted, level, draws[name]))
            out.append(record)
    return out


def _relative(by_seed, reference, seeds, wanted, level, draws) -> dict:
    """Accuracy relative to full attention (same pretraining seed) on the same questions."""
    paired = [s for s in seeds if reference and s in reference and all(i in reference[s] for i in wanted)]
    if not paired:
        return {"relative": None, "relative_t_interval": [None, None], "relative_bootstrap_interval": [None, None]}
    own, ref = _matrix(by_seed, paired, wanted), _matrix(reference, paired, wanted)
    ratios = [float(a / b) for a, b in zip(own.mean(axis=1), ref.mean(axis=1)) if b > 0]
    mean, low, high = _clip(t_interval(ratios, level), 0.0, None) if ratios else (None, None, None)
    return {
        "relative": mean,
        "relative_t_interval": [low, high],
        "relative_bootstrap_interval": list(bootstrap_interval(own, ref, level=level, indices=draws)),
    }


def compare(
    rows: list[dict],
    first: tuple[str, str],
    second: tuple[str, str],
    subset: str = "in range",
    *,
    level: float = LEVEL,
    resamples: int = 2000,
    seed: int = 0,
) -> dict | None:
    """Accuracy of (LoRA, setting) `first` minus that of `second`, paired by seed and question:
    the per-seed differences with their t interval, and a bootstrap over questions. None when the
    two share no seed."""
    correct, _, questions = collect(rows)
    wanted = subsets(questions).get(subset, [])
    a, b = correct.get(first, {}), correct.get(second, {})
    seeds = sorted(s for s in a if s in b and all(i in a[s] and i in b[s] for i in wanted))
    if not seeds or not wanted:
        return None
    one, two = _matrix(a, seeds, wanted), _matrix(b, seeds, wanted)
    per_seed = (one.mean(axis=1) - two.mean(axis=1)).tolist()
    mean, low, high = t_interval(per_seed, level)
    draws = resample_indices(len(wanted), resamples, seed)
    return {
        "seeds": seeds,
        "questions": len(wanted),
        "per_seed": per_seed,
        "mean": mean,
        "t_interval": [low, high],
        "bootstrap_interval": list(bootstrap_difference(one, two, level=level, indices=draws)),
    }


def find(summary: list[dict], lora: str, setting: str, subset: str = "all") -> dict | None:
    return next((r for r in summary if r["lora"] == lora and r["setting"] == setting and r["subset"] == subset), None)


# ------------------------------------------------------------------------------------------
# Targets (issue 14)
# ------------------------------------------------------------------------------------------
def _lower(record: dict, prefix: str = "") -> float | None:
    """The lower of the two interval bounds (t over seeds, bootstrap over questions)."""
    bounds = [record[f"{prefix}t_interval"][0], record[f"{prefix}bootstrap_interval"][0]]
    bounds = [b for b in bounds if b is not None]
    return min(bounds) if bounds else None


def _upper(record: dict, prefix: str = "") -> float | None:
    """The higher of the two interval bounds (t over seeds, bootstrap over questions)."""
    bounds = [record[f"{prefix}t_interval"][1], record[f"{prefix}bootstrap_interval"][1]]
    bounds = [b for b in bounds if b is not None]
    return max(bounds) if bounds else None


def _fmt(record: dict | None, relative: bool = False) -> str:
    if record is None:
        return "not run"
    prefix = "relative_" if relative else ""
    value = record["relative" if relative else "mean"]
    t, boot = record[f"{prefix}t_interval"], record[f"{prefix}bootstrap_interval"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"
    return (
        f"{pct(value)} (t [{pct(t[0])}, {pct(t[1])}], bootstrap [{pct(boot[0])}, {pct(boot[1])}]; "
        f"{len(record['seeds'])} seeds x {record['questions']} questions)"
    )


def _fmt_relative(record: dict | None) -> str:
    return _fmt(record) if record is None else f"{_fmt(record, relative=True)} of full attention"


# Below this in-range accuracy, full attention is no baseline for the relative targets.
NO_BASELINE = 0.10


def evaluate_targets(
    summary: list[dict],
    fa_decode_lora: str,
    fa_decode_setting: str,
    naive_setting: str,
    min_seeds: int = 1,
    depth_bins: tuple[str, ...] = (),
    other_fa_decode_loras: tuple[str, ...] = (),
) -> list[dict]:
    """The four targets of issue 14 on in-range questions, each met (True), missed (False) or not
    run (None) by its mean, with the numbers behind the verdict; `interval_agrees` says whether
    both 95% intervals lie wholly on the side of the threshold that the mean is on (else the
    verdict may not hold for other seeds or questions).

    - full attention (no LoRA) >= 85%;
    - naive SWA (no LoRA) < 10% of full attention;
    - `fa_decode_setting` with the LoRA `fa_decode_lora` >= 95% of full attention, both interval
      lower bounds above 90%;
    - some setting saving >= 50% of the KV cache, with a LoRA trained under that same setting,
      >= 50% of full attention (the best such setting is named; all candidates are listed).
    The three relative targets are not decided (None) while full attention answers under
    NO_BASELINE of the in-range questions, and no target is decided on a row of fewer than
    `min_seeds` seeds (the study's seeds: a study half run gives no verdict, only its numbers).
    The naive-SWA evidence adds its share of full attention per bin of `depth_bins` (all lengths):
    a fact near the end of a short prompt lies inside the window. Each of `other_fa_decode_loras`
    that has a row under `fa_decode_setting` adds a row of the FA-decode target of its own, after
    the four (a verdict per LoRA: none is picked as the best of several).
    """
    subset = "in range"
    full = find(summary, *REFERENCE, subset)
    naive = find(summary, NO_LORA, naive_setting, subset)
    swaa = find(summary, fa_decode_lora, fa_decode_setting, subset)
    own = [
        r
        for r in summary
        if r["subset"] == subset
        and r["lora"] != NO_LORA
        and r["setting"] == r["lora_setting"]
        and r["kv_cache_saved"] >= 0.5
    ]
    complete = [r for r in own if len(r["seeds"]) >= min_seeds] or own  # a half-run row decides nothing
    best = max((r for r in complete if r["relative"] is not None), key=lambda r: r["relative"], default=None)
    verdict = lambda ok, record: None if record is None else bool(ok)

    def agrees(record, prefix, threshold, above):
        """Both intervals on the same side of `threshold` as the mean (>= if above, else <)."""
        if record is None or record["relative" if prefix else "mean"] is None:
            return None
        mean = record["relative" if prefix else "mean"]
        low, high = _lower(record, prefix), _upper(record, prefix)
        if low is None:
            return False
        side = (lambda v: v >= threshold) if above else (lambda v: v < threshold)
        return bool(side(low) == side(mean) == side(high))

    def fa_decode_target(record, lora, label=""):
        return {
            "target": f"SWAA + LoRA with FA decode >= 95% of full attention, interval above 90%{label}",
            "met": verdict(
                record
                and record["relative"] is not None
                and record["relative"] >= 0.95
                and (_lower(record, "relative_") or 0.0) > 0.90,
                record,
            ),
            "interval_agrees": agrees(record, "relative_", 0.90, True),
            "evidence": f"{fa_decode_setting} + LoRA {lora}: {_fmt_relative(record)}",
        }

    targets = [
        {
            "target": "full attention >= 85% on in-range prompts",
            "met": verdict(full and full["mean"] >= 0.85, full),
            "interval_agrees": agrees(full, "", 0.85, True),
            "evidence": f"full attention: {_fmt(full)}",
        },
        {
            "target": "naive SWA < 10% of full attention",
            "met": verdict(naive and naive["relative"] is not None and naive["relative"] < 0.10, naive),
            "interval_agrees": agrees(naive, "relative_", 0.10, False),
            "evidence": f"{naive_setting}: {_fmt_relative(naive)}"
            + "".join(
                f"; fact in the {name}: {100 * r['relative']:.1f}% of full"
                for name in depth_bins
                if (r := find(summary, NO_LORA, naive_setting, name)) and r["relative"] is not None
            ),
        },
        fa_decode_target(swaa, fa_decode_lora),
        {
            "target": "a setting saving >= 50% of the KV cache, with LoRA, >= 50% of full attention",
            "met": verdict(best and best["relative"] >= 0.5, own or None),
            "interval_agrees": agrees(best, "relative_", 0.5, True),
            "evidence": "; ".join(
                f"{r['setting']} + LoRA {r['lora']} (KV saved {100 * r['kv_cache_saved']:.0f}%): "
                f"{_fmt(r, relative=True)}"
                for r in sorted(own, key=lambda r: -(r["relative"] or 0.0))
            )
            or "no LoRA row saves >= 50% of the KV cache",
        },
    ]
    records = [full, naive, swaa, best]
    for name in other_fa_decode_loras:
        if (record := find(summary, name, fa_decode_setting, subset)) is not None:
            targets.append(fa_decode_target(record, name, f" (LoRA {name})"))
            records.append(record)
    for target, record in zip(targets, records):
        if record is not None and target["met"] is not None and len(record["seeds"]) < min_seeds:
            target["evidence"] = f"not decided: {len(record['seeds'])} of {min_seeds} seeds; {target['evidence']}"
            target["met"] = target["interval_agrees"] = None
    if full is not None and full["mean"] < NO_BASELINE:
        # A share of a model that answers almost nothing is noise (1 of 3 right is "33%"): the
        # relative targets are not decided, their rows are still reported.
        for target in targets[1:]:
            if target["met"] is not None:
                target["evidence"] = f"not decided: full attention answers {_fmt(full)}; {target['evidence']}"
                target["met"] = target["interval_agrees"] = None
    return targets
