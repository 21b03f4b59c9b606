"""The multi-seed adaptation study (issue 14): several pretraining seeds, each evaluated on the
held-out binned set (data.make_eval_set) under the SWAA ladder and the KV-saving settings, with
and without a LoRA trained under each setting, plus a sweep of what lets a LoRA without FA
decode recover.

A study is a `StudyConfig` (experiments/adaptation/study.yaml for the GPU run). Its work is a
list of tasks per seed:
- `pretrain`: the data, full-attention pretraining (seed = the study seed), the base packed
  into chunks so later jobs on other machines can rebuild it (ladder.pack_base);
- `base_ladder`, `base_kv`: the base model, no LoRA, under the ladder and under every arm's
  own setting;
- `base_probe`: the full-attention layers of the KV-saving setting chosen by
  swaa_train.layer_probe on LoRA training rows (not the held-out questions), then the base, no
  LoRA, under window + sinks + those layers, no FA decode, named PROBED (the same name for
  every seed, whose layers differ);
- `arm:NAME`: a LoRA trained by swaa_train's trainer under the arm's setting (LoRA seed = the
  study seed), evaluated under that setting and that setting with FA decode (the FA-decode arm:
  under the whole ladder). A `probed` arm takes its full layers from the seed's base_probe.
`plan_jobs` packs the tasks of each seed into jobs that fit `job_budget_s` by the time
estimates of `Estimates`; `run_job` runs one (skipping tasks already done, so a job cut short
can be run again). Every task writes `rows-s{seed}-{task}.jsonl`: one row per evaluated
question, tagged with seed, LoRA, setting, its SWAA config and the question's bins and prompt
length; stats.py and report.py need nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import torch
from transformers.utils import logging

from experiments.adaptation.data import DEPTH_BINS, LENGTH_BINS, TRAIN_RANGE, write_repro_data
from swaa_train.evaluate import EvalSetting, default_settings
from swaa_train.recipe import load_yaml
from swaa_train.swaa_config import SWAAConfig, reject_unknown
from swaa_train.synthetic import write_parquet

logger = logging.get_logger("swaa_train")

NO_LORA = "none"
PROBED = "probed"  # base_probe's setting names end in "+ N probed full layers"


def setting_name(swaa: SWAAConfig) -> str:
    """A name that spells the setting out, e.g. "SWA 512 + sinks 32 + full layers 1,5"."""
    if swaa.sliding_window_size is None:
        return "full attention"
    parts = [f"SWA {swaa.sliding_window_size}"]
    if swaa.keep_first:
        parts.append(f"sinks {swaa.keep_first}")
    fa = swaa.force_fa_decode
    if fa:
        parts.append("FA decode" if fa is True else f"FA decode in layers {','.join(map(str, fa))}")
    if swaa.non_sliding_layers:
        parts.append(f"full layers {','.join(map(str, swaa.non_sliding_layers))}")
    return " + ".join(parts)


def probed_name(swaa: SWAAConfig, count: int) -> str:
    """`swaa` with `count` full layers chosen per base by the probe: one name for every seed,
    whose layers differ, e.g. "SWA 512 + sinks 32 + 2 probed full layers"."""
    return f"{setting_name(dataclasses.replace(swaa, non_sliding_layers=[]))} + {count} {PROBED} full layers"


def label(arm: Arm | None, swaa: SWAAConfig) -> str:
    """The name rows and tables give `swaa` as evaluated for `arm` (None: the base alone)."""
    return probed_name(swaa, len(swaa.non_sliding_layers)) if arm is not None and arm.probed else setting_name(swaa)


@dataclass
class Arm:
    """One LoRA per seed, trained under `swaa` and evaluated under it."""

    name: str = field(metadata={"help": "Short name, used in file names and tables."})
    swaa: SWAAConfig = field(metadata={"help": "The setting the LoRA is trained (and evaluated) under."})
    group: str = field(default="kv", metadata={"help": "ladder (the FA-decode LoRA), kv or sweep."})
    factor: str = field(default="", metadata={"help": "Recovery sweep: the factor this arm varies."})
    level: str = field(default="", metadata={"help": "Recovery sweep: this arm's level of `factor`."})
    reference: str = field(
        default="", metadata={"help": "Recovery sweep: the arm it varies (default: the study's sweep_reference)."}
    )
    steps: int | None = field(default=None, metadata={"help": "LoRA steps (default: the study's lora_steps)."})
    learning_rate: float | None = field(default=None, metadata={"help": "LoRA learning rate (default: the recipe's)."})
    data: str = field(default="train", metadata={"help": "train (long questions) or mix (long + short, 1:1)."})
    eval_ladder: bool = field(
        default=False, metadata={"help": "Evaluate the adapter under the whole ladder (else its setting +- FA decode)."}
    )
    probed: bool = field(
        default=False,
        metadata={"help": "Full layers from the seed's base_probe (run first); swaa lists none of its own."},
    )

    def __post_init__(self):
        if isinstance(self.swaa, dict):
            self.swaa = SWAAConfig.from_dict(self.swaa)
        if self.probed and self.eval_ladder:
            raise ValueError(f"arm {self.name!r}: the ladder's arm cannot be probed")
        if self.swaa.sliding_window_size is None:
            raise ValueError(f"arm {self.name!r}: swaa.sliding_window_size must be set (a LoRA under full attention)")
        if self.group not in ("ladder", "kv", "sweep"):
            raise ValueError(f"arm {self.name!r}: group must be ladder, kv or sweep, got {self.group!r}")
        if self.data not in ("train", "mix"):
            raise ValueError(f"arm {self.name!r}: data must be train or mix, got {self.data!r}")

    @classmethod
    def from_dict(cls, data: dict) -> Arm:
        reject_unknown(cls, data, f"arm {data.get('name')!r}")
        arm = cls(**data)
        if arm.probed and arm.swaa.non_sliding_layers:
            raise ValueError(f"arm {arm.name!r}: a probed arm takes its full layers from the probe: list none in swaa")
        return arm


@dataclass
class Estimates:
    """Seconds per unit of work on one H100, from the single-seed run of docs/adaptation.md."""

    job_start_s: float = field(default=40.0, metadata={"help": "Imports, eval/train data, unpacking the base."})
    probe_forward_s: float = field(default=0.02, metadata={"help": "One probe forward of a training row."})
    pretrain_data_s: float = field(default=25.0, metadata={"help": "All pretraining data (16 processes)."})
    pretrain_extra_s: float = field(default=25.0, metadata={"help": "Model build, saving, packing."})
    pretrain_step_s: float = field(default=0.117, metadata={"help": "One pretraining step (2525 in 296 s)."})
    model_load_s: float = field(default=8.0, metadata={"help": "Loading base (+ adapter) for one evaluation."})
    tokenize_s: float = field(default=32.0, metadata={"help": "LoRA data tokenized, trainer built."})
    lora_step_s: float = field(default=0.32, metadata={"help": "One LoRA step (60 s made 190 steps)."})
    eval_question_s: float = field(
        default=0.06, metadata={"help": "One question under one setting (26 s for 5 x 100 at 2k-16k tokens)."}
    )


@dataclass
class StudyConfig:
    """Everything the study runs (experiments/adaptation/study.yaml)."""

    out_dir: str = field(default="outputs/adaptation", metadata={"help": "data/, seed{N}/ and the row files."})
    recipe: str = field(default="experiments/adaptation/lora.yaml", metadata={"help": "The LoRA recipe."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Pretraining and LoRA seeds."})
    eval_questions: int = field(default=300, metadata={"help": "Held-out questions (a multiple of the cells)."})
    length_bins: dict = field(default_factory=lambda: dict(LENGTH_BINS), metadata={"help": "name: [low, high) tokens"})
    depth_bins: dict = field(default_factory=lambda: dict(DEPTH_BINS), metadata={"help": "name: [low, high] depth"})
    train_range: list[int] = field(default_factory=lambda: list(TRAIN_RANGE), metadata={"help": "Trained lengths."})
    data_counts: dict = field(
        default_factory=lambda: {
            "train": 6000,
            "train_short": 30000,
            "lm": 3000,
            "lm_short": 10000,
            "drill": 60000,
            "eval_short": 200,
        },
        metadata={"help": "Rows of each pretraining / LoRA data set (data.DATASETS)."},
    )
    short_tokens: list[int] = field(default_factory=lambda: [64, 256], metadata={"help": "Length of *_short rows."})
    pretrain: dict = field(
        default_factory=lambda: {"time_budget_s": 300.0},
        metadata={"help": "PretrainArgs fields (not data_dir, out_dir, seed)."},
    )
    window: int = field(default=512, metadata={"help": "Sliding window of the ladder."})
    sinks: int = field(default=32, metadata={"help": "Sink tokens of the ladder."})
    full_layers: list[int] = field(default_factory=lambda: [1, 5], metadata={"help": "Interleaving of the ladder."})
    lora_steps: int = field(default=200, metadata={"help": "LoRA steps of an arm that sets none."})
    lora_time_cap_s: float | None = field(default=300.0, metadata={"help": "Stop any LoRA after this long."})
    lora_overrides: list[str] = field(default_factory=list, metadata={"help": "Recipe overrides for every LoRA."})
    probe_samples: int = field(default=16, metadata={"help": "base_probe: LoRA training rows the probe scores."})
    arms: list[Arm] = field(default_factory=list, metadata={"help": "The LoRAs (default: default_arms())."})
    sweep_reference: str = field(
        default="no_fa", metadata={"help": "The arm the recovery sweep varies (the sweep's reference)."}
    )
    eval_set: int = field(
        default=0,
        metadata={
            "help": "Which held-out question set: 0 is the set of runs 1-3; another number draws other questions "
            "of the same bins and counts (a claim should hold on more than one set). Rows record it, and rows of "
            "two sets pool only as separate runs."
        },
    )
    max_new_tokens: int = field(default=48, metadata={"help": "Answer length limit."})
    batch_size: int = field(default=50, metadata={"help": "Prompts per generate call."})
    dtype: str = field(default="bfloat16", metadata={"help": "Evaluation dtype."})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu (default: cuda if available)."})
    num_proc: int | None = field(default=16, metadata={"help": "Processes generating and tokenizing data."})
    job_budget_s: float = field(default=540.0, metadata={"help": "Estimated seconds a job may take."})
    estimates: Estimates = field(default_factory=Estimates, metadata={"help": "Time estimates (Estimates)."})

    def __post_init__(self):
        if isinstance(self.estimates, dict):
            reject_unknown(Estimates, self.estimates, "estimates")
            self.estimates = Estimates(**self.estimates)
        self.arms = [Arm.from_dict(a) if isinstance(a, dict) else a for a in self.arms] or default_arms(
            self.window, self.sinks, self.full_layers
        )
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names) or any(not n.replace("_", "").replace("-", "").isalnum() for n in names):
            raise ValueError(f"arms: names must be unique and alphanumeric (with _ or -), got {names}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and not empty, got {self.seeds}")
        cells = len(self.length_bins) * len(self.depth_bins)
        if self.eval_questions <= 0 or self.eval_questions % cells:
            raise ValueError(f"eval_questions must be a positive multiple of {cells} cells, got {self.eval_questions}")
        if self.eval_set < 0:
            raise ValueError(f"eval_set must be >= 0, got {self.eval_set}")
        if self.sweep_reference not in names:
            raise ValueError(f"sweep_reference: {self.sweep_reference!r} is not an arm; arms: {names}")
        for arm in self.arms:
            if arm.reference and (arm.reference not in names or arm.reference == arm.name):
                raise ValueError(f"arm {arm.name!r}: reference {arm.reference!r} is not another arm; arms: {names}")
        if sum(a.eval_ladder for a in self.arms) != 1:
            raise ValueError("arms: exactly one arm must have eval_ladder (the LoRA of the ladder)")

    @classmethod
    def from_dict(cls, data: dict) -> StudyConfig:
        reject_unknown(cls, data, "study")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> StudyConfig:
        return cls.from_dict(load_yaml(Path(path).read_text()) or {})

    # -- where things go ------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return Path(self.out_dir) / "data"

    @property
    def eval_path(self) -> Path:
        """The held-out questions of `eval_set` (set 0 where runs 1-3 had it)."""
        folder = self.data_dir if self.eval_set == 0 else self.data_dir / f"eval_set{self.eval_set}"
        return folder / "eval_bins.parquet"

    def seed_dir(self, seed: int) -> Path:
        return Path(self.out_dir) / f"seed{seed}"

    def rows_path(self, seed: int, task: str) -> Path:
        return self.seed_dir(seed) / "rows" / f"rows-s{seed}-{task.replace(':', '-')}.jsonl"

    # -- what is evaluated ----------------------------------------------------------------
    @property
    def ladder_arm(self) -> Arm:
        return next(a for a in self.arms if a.eval_ladder)

    def ladder(self, num_layers: int) -> list[SWAAConfig]:
        """full attention, naive SWA, + sinks, + FA decode, + interleaving (evaluate.default_settings)."""
        trained = SWAAConfig(self.window, self.sinks, True, self.full_layers)
        return [s.swaa for s in default_settings(trained, num_layers, has_adapter=False)]

    def kv_settings(self, num_layers: int) -> list[SWAAConfig]:
        """Every arm's own setting that the ladder lacks (evaluated without LoRA in base_kv)."""
        out = []
        for arm in self.arms:  # a probed arm's setting is base_probe's
            if not arm.probed and arm.swaa not in self.ladder(num_layers) and arm.swaa not in out:
                out.append(arm.swaa)
        return out

    def arm_settings(self, arm: Arm, num_layers: int) -> list[SWAAConfig]:
        """What the arm's LoRA is evaluated under (`arm` as `seed_arm` gives it, for a probed one)."""
        if arm.eval_ladder:
            return self.ladder(num_layers)
        if arm.swaa.force_fa_decode is True:
            # Another FA-decode LoRA: also the ladder's FA-decode rung (the FA-decode target) and
            # full attention (whether the LoRA costs the model what it had).
            out = [arm.swaa]
            for extra in (self.fa_decode_setting(), SWAAConfig()):
                if extra not in out:
                    out.append(extra)
            return out
        return [arm.swaa, dataclasses.replace(arm.swaa, force_fa_decode=True)]

    def fa_decode_setting(self) -> SWAAConfig:
        """The ladder's FA-decode rung: window and sinks, FA decode, no full layers."""
        return SWAAConfig(self.window, self.sinks, True)

    @property
    def fa_decode_arms(self) -> list[Arm]:
        """The LoRAs trained with FA decode besides the ladder's (each gets a row of the FA-decode target)."""
        return [a for a in self.arms if not a.eval_ladder and a.swaa.force_fa_decode is True]

    def probe_path(self, seed: int) -> Path:
        return self.seed_dir(seed) / "probe.json"

    def lora_log_path(self, seed: int, arm: str) -> Path:
        """The arm's LoRA training log (the trainer's log_history, one entry a line)."""
        return self.seed_dir(seed) / "lora_logs" / f"{arm}.jsonl"

    def seed_arm(self, arm: Arm, seed: int) -> Arm:
        """`arm` as seed `seed` trains it: a probed arm gets the layers its base_probe chose."""
        if not arm.probed:
            return arm
        if not self.probe_path(seed).is_file():
            raise ValueError(f"arm {arm.name!r} of seed {seed}: no {self.probe_path(seed)}: run base_probe first")
        chosen = sorted(json.loads(self.probe_path(seed).read_text())["chosen"])
        return dataclasses.replace(arm, swaa=dataclasses.replace(arm.swaa, non_sliding_layers=chosen))

    def arm_label(self, arm: Arm) -> str:
        """The name of the arm's own setting in rows and tables (seed-independent)."""
        return probed_name(arm.swaa, len(self.full_layers)) if arm.probed else setting_name(arm.swaa)

    def probe_setting(self) -> SWAAConfig:
        """base_probe's setting before the probe: the ladder's window and sinks, no FA decode; the
        probe chooses as many full layers as the ladder has."""
        return SWAAConfig(self.window, self.sinks, False)

    def reference_of(self, arm: Arm) -> Arm:
        """The arm a sweep arm is compared with: its own reference, else the study's."""
        name = arm.reference or self.sweep_reference
        return next(a for a in self.arms if a.name == name)

    def tasks(self) -> list[str]:
        return ["pretrain", "base_ladder", "base_kv", "base_probe", *(f"arm:{a.name}" for a in self.arms)]


def default_arms(window: int = 512, sinks: int = 32, full_layers: list[int] | None = None) -> list[Arm]:
    """The LoRAs of issue 14 for an 8-layer model: the ladder's (FA decode), the KV-saving ones
    (no FA decode: sinks + interleaving; every other layer full), and a sweep around the first
    KV-saving one, one factor at a time: full-layer count, window, steps and data (at lr 1e-4,
    against that arm at lr 1e-4), learning rate, and the full layers chosen per base by the probe;
    and the FA-decode, probed and every-other-layer LoRAs at lr 1e-4, each against its own arm."""
    full_layers = full_layers or [1, 5]
    no_fa = lambda w=window, layers=full_layers: SWAAConfig(w, sinks, False, layers)
    return [
        Arm("fa_decode", SWAAConfig(window, sinks, True, full_layers), group="ladder", eval_ladder=True),
        Arm("no_fa", no_fa(), group="kv"),
        Arm("no_fa_every_other", no_fa(layers=[1, 3, 5, 7]), group="kv", factor="full layers", level="4"),
        # The sweep's factors at lr 1e-4 (the rate at which LoRAs helped, runs 3-4), each against no_fa_lr1e-4.
        Arm("no_fa_3full_lr1e-4", no_fa(layers=[1, 4, 7]), group="sweep", factor="full layers", level="3",
            learning_rate=1e-4, reference="no_fa_lr1e-4"),
        Arm("no_fa_w1024_lr1e-4", no_fa(w=1024), group="sweep", factor="window", level="1024",
            learning_rate=1e-4, reference="no_fa_lr1e-4"),
        Arm("no_fa_w2048_lr1e-4", no_fa(w=2048), group="sweep", factor="window", level="2048",
            learning_rate=1e-4, reference="no_fa_lr1e-4"),
        Arm("no_fa_lr3e-4", no_fa(), group="sweep", factor="learning rate", level="3e-4", learning_rate=3e-4),
        Arm("no_fa_lr1e-4", no_fa(), group="sweep", factor="learning rate", level="1e-4", learning_rate=1e-4),
        Arm("no_fa_600steps_lr1e-4", no_fa(), group="sweep", factor="steps", level="600", steps=600,
            learning_rate=1e-4, reference="no_fa_lr1e-4"),
        Arm("no_fa_mix_lr1e-4", no_fa(), group="sweep", factor="data mix", level="long + short 1:1", data="mix",
            learning_rate=1e-4, reference="no_fa_lr1e-4"),
        Arm("no_fa_probed", no_fa(layers=[]), group="sweep", factor="full layers", level="probed", probed=True),
        # The two LoRAs that met a target's bar without training, at a tenth of the learning rate.
        Arm("fa_decode_lr1e-4", SWAAConfig(window, sinks, True, full_layers), group="sweep", factor="learning rate",
            level="1e-4, FA decode", learning_rate=1e-4, reference="fa_decode"),
        Arm("no_fa_probed_lr1e-4", no_fa(layers=[]), group="sweep", factor="learning rate",
            level="1e-4, probed layers", learning_rate=1e-4, probed=True, reference="no_fa_probed"),
        # Both helped at 1e-4 where 1e-3 hurt (run 3): the other KV-saving setting at that rate.
        Arm("no_fa_every_other_lr1e-4", no_fa(layers=[1, 3, 5, 7]), group="sweep", factor="learning rate",
            level="1e-4, every other layer", learning_rate=1e-4, reference="no_fa_every_other"),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------
# The plan: tasks packed into jobs of at most job_budget_s (estimated)
# ------------------------------------------------------------------------------------------
NUM_LAYERS = 8  # the pretrained model's layers, for estimates (PretrainArgs.num_layers)


def estimate_s(study: StudyConfig, task: str) -> float:
    est, q = study.estimates, study.eval_questions
    num_layers = int(study.pretrain.get("num_layers", NUM_LAYERS))
    if task == "pretrain":
        from experiments.adaptation.pretrain import PretrainArgs

        defaults = PretrainArgs.__dataclass_fields__
        budget = float(study.pretrain.get("time_budget_s", defaults["time_budget_s"].default))
        steps = int(study.pretrain.get("max_steps", defaults["max_steps"].default))
        return est.pretrain_data_s + min(budget, steps * est.pretrain_step_s) + est.pretrain_extra_s
    if task == "base_ladder":
        return est.model_load_s + len(study.ladder(num_layers)) * q * est.eval_question_s
    if task == "base_kv":
        return est.model_load_s + len(study.kv_settings(num_layers)) * q * est.eval_question_s
    if task == "base_probe":
        budget = len(study.full_layers)
        forwards = (2 + sum(num_layers - k for k in range(budget))) * study.probe_samples
        return est.model_load_s + est.tokenize_s + forwards * est.probe_forward_s + q * est.eval_question_s
    arm = next(a for a in study.arms if f"arm:{a.name}" == task)
    steps = arm.steps or study.lora_steps
    train = min(steps * est.lora_step_s, study.lora_time_cap_s or float("inf"))
    evals = len(study.arm_settings(arm, num_layers)) * q * est.eval_question_s
    return 2 * est.model_load_s + est.tokenize_s + train + evals


@dataclass
class Job:
    name: str
    seed: int
    tasks: list[str]
    estimate_s: float


def plan_jobs(study: StudyConfig) -> list[Job]:
    """Per seed, the tasks in order, packed greedily into jobs whose estimate fits job_budget_s
    (job_start_s included); a task alone over the budget gets a job of its own."""
    jobs = []
    for seed in study.seeds:
        current: list[str] = []
        total = study.estimates.job_start_s
        for task in study.tasks():
            cost = estimate_s(study, task)
            if current and total + cost > study.job_budget_s:
                jobs.append(Job(f"s{seed}-{len([j for j in jobs if j.seed == seed])}", seed, current, total))
                current, total = [], study.estimates.job_start_s
            current.append(task)
            total += cost
        jobs.append(Job(f"s{seed}-{len([j for j in jobs if j.seed == seed])}", seed, current, total))
    return jobs


def find_job(study: StudyConfig, name: str) -> Job:
    jobs = plan_jobs(study)
    for job in jobs:
        if job.name == name:
            return job
    raise ValueError(f"no job {name!r} in the plan; jobs: {[j.name for j in jobs]}")


# ------------------------------------------------------------------------------------------
# Running a job
# ------------------------------------------------------------------------------------------
def ensure_data(study: StudyConfig, names: list[str]) -> dict[str, Path]:
    """The data sets `names` (data.DATASETS, + "train_mix") in data_dir (eval_bins: the study's
    eval_path), written where missing (every one is deterministic, so a file written by an
    earlier job is the same)."""
    paths = {name: study.data_dir / f"{name}.parquet" for name in names}
    wanted = {"train", "train_short"} if "train_mix" in names else set()
    others = sorted({*names, *wanted} - {"train_mix", "eval_bins"})
    missing = {n: study.data_counts[n] for n in others if not (study.data_dir / f"{n}.parquet").is_file()}
    common = dict(
        min_tokens=study.train_range[0],
        max_tokens=study.train_range[1],
        short_tokens=tuple(study.short_tokens),
        workers=study.num_proc,
        eval_length_bins={k: tuple(v) for k, v in study.length_bins.items()},
        eval_depth_bins={k: tuple(v) for k, v in study.depth_bins.items()},
    )
    if missing:
        write_repro_data(study.data_dir, missing, **common)
    if "eval_bins" in names:
        paths["eval_bins"] = study.eval_path
        if not study.eval_path.is_file():
            write_repro_data(
                study.eval_path.parent, {"eval_bins": study.eval_questions}, eval_set=study.eval_set, **common
            )
    if "train_mix" in names and not paths["train_mix"].is_file():
        write_mix(study.data_dir / "train.parquet", study.data_dir / "train_short.parquet", paths["train_mix"])
    return paths


def write_mix(first: Path, second: Path, out: Path) -> Path:
    """Rows of the two files in turn (first, second, first, ...), the rest of the longer one after:
    any leading slice (data.max_samples) holds both kinds in equal numbers."""
    a, b = pq.read_table(first).to_pylist(), pq.read_table(second).to_pylist()
    mixed = [row for pair in zip(a, b) for row in pair] + a[len(b) :] + b[len(a) :]
    return write_parquet(out, mixed)


def ensure_base(study: StudyConfig, seed: int) -> Path:
    """The pretrained base of `seed`: already there, or rebuilt from its chunks."""
    from experiments.adaptation.ladder import CHUNK_MANIFEST, unpack_base

    base, chunks = study.seed_dir(seed) / "base", study.seed_dir(seed) / "chunks"
    if (base / "config.json").is_file():
        return base
    if not (chunks / CHUNK_MANIFEST).is_file():
        raise FileNotFoundError(
            f"seed {seed}: no base in {base} and no {CHUNK_MANIFEST} in {chunks}: run its pretrain job"
        )
    return unpack_base(chunks, base)


def run_pretrain(study: StudyConfig, seed: int) -> dict:
    from experiments.adaptation.ladder import pack_base
    from experiments.adaptation.pretrain import PretrainArgs, pretrain

    ensure_data(study, [*study.data_counts, "eval_bins"])
    base = study.seed_dir(seed) / "base"
    args = PretrainArgs(
        data_dir=str(study.data_dir), out_dir=str(base), seed=seed, device=study.device, **study.pretrain
    )
    summary = pretrain(args)
    pack_base(base, study.seed_dir(seed) / "chunks")
    return {"pretrain_steps": summary["steps"], "pretrain_s": summary["seconds"]}


@functools.lru_cache(maxsize=4)
def question_info(eval_path: Path, tokenizer_dir: Path) -> tuple[dict, ...]:
    """Each eval question's bins, hops and prompt tokens (chat-formatted, as generation feeds it);
    computed once per process (every seed's base keeps the shipped tokenizer)."""
    from experiments.adaptation.ladder import prompt_lengths

    rows = pq.read_table(eval_path, columns=["length_bin", "depth_bin", "in_range", "hops"]).to_pylist()
    lengths = prompt_lengths(str(eval_path), str(tokenizer_dir))
    return tuple({**row, "prompt_tokens": n} for row, n in zip(rows, lengths))


def evaluate(
    study: StudyConfig,
    seed: int,
    base: Path,
    settings: list[SWAAConfig],
    out: Path,
    arm: Arm | None,
    extra: dict,
    names: list[str] | None = None,
) -> list[dict]:
    """Evaluate `settings` (with `arm`'s adapter if given) and return the tagged rows; `names`
    replace the settings' names (`label`)."""
    from swaa_train.evaluate import run_evaluation

    if not settings:
        return []
    eval_path = study.eval_path
    adapter = study.seed_dir(seed) / "adapters" / arm.name if arm else None
    names = names or [label(arm, s) for s in settings]
    evals = [EvalSetting(name, s, adapter=arm is not None) for name, s in zip(names, settings)]
    summary = run_evaluation(
        str(base),
        str(eval_path),
        str(out),
        adapter=str(adapter) if adapter else None,
        settings=evals,
        max_new_tokens=study.max_new_tokens,
        batch_size=study.batch_size,
        dtype=study.dtype,
        device=study.device,
    )
    measured = {r["setting"]: r["kv_cache_saved"] for r in summary}
    questions = question_info(eval_path.resolve(), base.resolve())
    num_layers = json.loads((base / "config.json").read_text())["num_hidden_layers"]
    by_label = {(s.name + (" + adapter" if s.adapter else "")): s for s in evals}
    rows = []
    for line in (out / "samples.jsonl").read_text().splitlines():
        sample = json.loads(line)
        setting = by_label[sample["setting"]]
        rows.append(
            {
                "seed": seed,
                "eval_set": study.eval_set,
                "lora": arm.name if arm else NO_LORA,
                "lora_setting": label(arm, arm.swaa) if arm else None,
                "setting": setting.name,
                "swaa": setting.swaa.to_dict(),
                "num_layers": num_layers,
                "group": arm.group if arm else ("ladder" if setting.swaa in study.ladder(num_layers) else "kv"),
                "factor": arm.factor if arm else "",
                "level": arm.level if arm else "",
                **extra,
                "index": sample["index"],
                **questions[sample["index"]],
                "correct": bool(sample["correct"]),
                "response": sample["response"],
                "kv_saved_measured": measured[sample["setting"]],
            }
        )
    return rows


def training_curve(log_history: list[dict], ends: int = 3) -> dict:
    """A LoRA's training loss at its start and its end (the mean of the first and of the last
    `ends` logged losses) and its largest logged gradient norm. A LoRA whose loss ends above where
    it started has moved the base away from what it already did (its learning rate too high)."""
    losses = [float(e["loss"]) for e in log_history if "loss" in e]
    norms = [float(e["grad_norm"]) for e in log_history if "grad_norm" in e]
    if not losses:
        return {}
    curve = {
        "lora_loss_start": sum(losses[:ends]) / len(losses[:ends]),
        "lora_loss_end": sum(losses[-ends:]) / len(losses[-ends:]),
    }
    if norms:
        curve["lora_grad_norm_max"] = max(norms)
    return curve


def train_arm(study: StudyConfig, seed: int, arm: Arm, base: Path) -> dict:
    from experiments.adaptation.ladder import train_adapter

    data = ensure_data(study, ["train_mix" if arm.data == "mix" else "train"])
    swaa = arm.swaa.to_dict()
    overrides = [
        f"model.name_or_path={base}",
        f"data.path={next(iter(data.values()))}",
        f"training.output_dir={study.seed_dir(seed) / 'adapters' / arm.name}",
        f"training.seed={seed}",
        f"training.max_steps={arm.steps or study.lora_steps}",
        *(f"swaa.{k}={json.dumps(v)}" for k, v in swaa.items()),
        *([f"training.learning_rate={arm.learning_rate}"] if arm.learning_rate else []),
        *study.lora_overrides,
    ]
    trainer = train_adapter(study.recipe, overrides, study.lora_time_cap_s, study.num_proc)
    log = study.lora_log_path(seed, arm.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(json.dumps(entry) + "\n" for entry in trainer.state.log_history))
    done = {"lora_steps": trainer.state.global_step, "lora_learning_rate": trainer.args.learning_rate}
    del trainer  # the evaluations that follow load the base again: free the training copy first
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return done


def probe_base(study: StudyConfig, seed: int, base: Path) -> list[int]:
    """swaa_train.layer_probe on the base: `probe_samples` LoRA training rows (the held-out
    questions are not looked at), the probe setting, as many layers as the ladder keeps full.
    The probe's every loss goes to seed{N}/probe.json."""
    from swaa_train.data import build_sft_dataset, load_rows
    from swaa_train.layer_probe import probe_full_layers, write_probe
    from swaa_train.model import load_model, load_tokenizer
    from swaa_train.recipe import ModelArgs

    train = ensure_data(study, ["train"])["train"]
    args = ModelArgs(name_or_path=str(base), dtype=study.dtype)
    tokenizer = load_tokenizer(args)
    rows = build_sft_dataset(load_rows(str(train)), tokenizer, format="fusang_long", max_samples=study.probe_samples)
    model = load_model(args, study.probe_setting())
    model.to(study.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = probe_full_layers(model, list(rows), study.probe_setting(), budget=len(study.full_layers))
    write_probe(result, study.probe_path(seed))
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return sorted(result.chosen)


def run_task(study: StudyConfig, seed: int, task: str) -> Path:
    """Run one task of one seed and write its rows (an empty file for pretrain); returns the file."""
    start = time.monotonic()
    extra: dict = {}
    rows: list[dict] = []
    work = study.seed_dir(seed) / "evals" / task.replace(":", "-")
    if task == "pretrain":
        extra = run_pretrain(study, seed)
    else:
        ensure_data(study, ["eval_bins"])
        base = ensure_base(study, seed)
        num_layers = json.loads((base / "config.json").read_text())["num_hidden_layers"]
        if task == "base_ladder":
            rows = evaluate(study, seed, base, study.ladder(num_layers), work, None, {"lora_steps": 0})
        elif task == "base_kv":
            rows = evaluate(study, seed, base, study.kv_settings(num_layers), work, None, {"lora_steps": 0})
        elif task == "base_probe":
            chosen = probe_base(study, seed, base)
            setting = dataclasses.replace(study.probe_setting(), non_sliding_layers=chosen)
            name = probed_name(study.probe_setting(), len(chosen))
            extra = {"lora_steps": 0, "probe_layers": chosen, "factor": "full layers", "level": PROBED}
            rows = evaluate(study, seed, base, [setting], work, None, extra, names=[name])
        elif task.startswith("arm:"):
            arm = next((a for a in study.arms if a.name == task.removeprefix("arm:")), None)
            if arm is None:
                raise ValueError(f"task {task!r}: no arm {task.removeprefix('arm:')!r} in the study")
            arm = study.seed_arm(arm, seed)
            extra = train_arm(study, seed, arm, base)
            if arm.probed:
                extra["probe_layers"] = arm.swaa.non_sliding_layers
            rows = evaluate(study, seed, base, study.arm_settings(arm, num_layers), work, arm, extra)
        else:
            raise ValueError(f"unknown task {task!r}; tasks: {study.tasks()}")
    path = study.rows_path(seed, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    partial.replace(path)  # the file exists only once the task is complete
    timing = {"seed": seed, "task": task, "seconds": round(time.monotonic() - start, 1), **extra}
    with open(study.seed_dir(seed) / "timings.jsonl", "a") as log:
        log.write(json.dumps(timing) + "\n")
    logger.info("Task %s of seed %d done: %s", task, seed, json.dumps(timing))
    return path


def run_job(study: StudyConfig, job: Job) -> list[Path]:
    """The job's tasks that have no rows file yet, in order."""
    done = []
    for task in job.tasks:
        path = study.rows_path(job.seed, task)
        if path.is_file():
            logger.info("Task %s of seed %d already done (%s)", task, job.seed, path)
        else:
            path = run_task(study, job.seed, task)
        done.append(path)
    return done


def read_rows(paths: list[str | Path]) -> list[dict]:
    """All rows of the row files under `paths` (files or directories, searched recursively)."""
    files = []
    for path in map(Path, paths):
        files += sorted(path.rglob("rows-*.jsonl")) if path.is_dir() else [path]
    return [json.loads(line) for file in files for line in file.read_text().splitlines() if line.strip()]


def read_seed_logs(paths: list[str | Path], name: str) -> dict[tuple[int, str], list[dict]]:
    """Every `seed{N}/<name>` JSON-lines file under `paths` (a glob such as "lora_logs/*.jsonl"),
    keyed by (seed, file stem): the pretraining and LoRA logs the report reads beside the rows."""
    logs = {}
    for path in map(Path, paths):
        for file in sorted(path.rglob(f"seed*/{name}")):
            seed_dir = next(p for p in file.parents if p.name.startswith("seed"))
            lines = file.read_text().splitlines()
            logs[(int(seed_dir.name.removeprefix("seed")), file.stem)] = [json.loads(x) for x in lines if x.strip()]
    return logs


RUN_STRIDE = 100  # read_results(separate_runs=True): seed s of the k-th run becomes base k * 100 + s
TIMING_KEYS = ("elapsed_s",)  # what differs between two pretrainings of one base


def read_pretrain_logs(paths: list[str | Path]) -> dict[tuple[int, str], list[dict]]:
    """Each seed's pretraining log under `paths`, keyed (seed, "pretrain_log"): from an out_dir's
    own layout (seed{N}/base/) or a collected one (collect_job, collect_all)."""
    return read_seed_logs(paths, "base/pretrain_log.jsonl") | read_seed_logs(paths, "pretrain_log.jsonl")


def pretrain_logs(path: str | Path) -> dict[int, list[dict]]:
    """Each seed's pretraining log under `path` (read_pretrain_logs), without its timings."""
    found = read_pretrain_logs([path])
    return {
        seed: [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in log] for (seed, _), log in found.items()
    }


def check_same_bases(paths: list[str | Path]) -> list[int]:
    """Rows from several paths pool as one run only if each seed's base is the same in all of them:
    two paths whose pretraining logs of a seed differ hold two bases (pretraining was not
    deterministic, or the code changed), and a ValueError names the seed, the paths and the first
    entry that differs. Pretraining with deterministic algorithms and `schedule: steps` (the study's)
    on the same GPU model and software gives the same log, so LoRAs trained on another day pool
    with earlier ones. Returns the seeds whose logs were compared (found under two paths or more)."""
    seen: dict[int, tuple[Path, list[dict]]] = {}
    compared: set[int] = set()
    for path in map(Path, paths):
        for seed, log in pretrain_logs(path).items():
            if seed not in seen:
                seen[seed] = (path, log)
                continue
            compared.add(seed)
            first, other = seen[seed]
            if other != log:
                step = next((i for i, (a, b) in enumerate(zip(other, log)) if a != b), min(len(other), len(log)))
                raise ValueError(
                    f"seed {seed}: the pretraining logs under {first} and {path} differ (entry {step}): they are "
                    "two bases; report them with --separate-runs"
                )
    return sorted(compared)


ROW_KEY = ("seed", "lora", "setting", "index")  # one answer: a base, its LoRA, the setting, the question


def read_results(paths: list[str | Path | list[str | Path]], separate_runs: bool = False) -> tuple[list[dict], dict]:
    """The rows and the logs (read_seed_logs: pretraining and LoRA) under `paths`. By default the
    paths are parts of one run (a seed's rows may be spread over them). With `separate_runs` each
    entry is a run of its own, whose bases differ from another run's under the same seeds
    (check_same_bases refuses to pool those as one run; so do rows of two question sets): seed s
    of the k-th entry becomes base k * RUN_STRIDE + s, so that each base is paired only with its
    own rows. An entry may itself be a list of paths: the parts of one run (LoRAs trained on
    another day on the same bases). A run's parts must not repeat an answer (ROW_KEY): a
    ValueError names the first one found twice."""
    if separate_runs:
        groups = [[entry] if isinstance(entry, (str, Path)) else list(entry) for entry in paths]
    else:
        groups = [list(paths)]
    rows, logs = [], {}
    for k, group in enumerate(groups):
        if len(group) > 1:
            check_same_bases(group)
        offset = k * RUN_STRIDE
        run_rows = read_rows(group)
        sets = sorted({row.get("eval_set", 0) for row in run_rows})  # rows before eval_set: set 0
        if len(sets) > 1:
            raise ValueError(
                f"rows of question sets {sets} under {[str(p) for p in group]}: question i of one set is not "
                "question i of another; report them with --separate-runs"
            )
        seen = set()
        for row in run_rows:
            key = tuple(row.get(name) for name in ROW_KEY)
            if key in seen:
                raise ValueError(
                    f"seed {key[0]}, LoRA {key[1]}, setting {key[2]!r}, question {key[3]}: answered twice under "
                    f"{[str(p) for p in group]}; name each run's rows once"
                )
            seen.add(key)
        rows += [{**row, "seed": offset + row["seed"]} for row in run_rows]
        found = read_pretrain_logs(group) | read_seed_logs(group, "lora_logs/*.jsonl")
        logs |= {(offset + seed, name): log for (seed, name), log in found.items()}
    return rows, logs


def collect_job(study: StudyConfig, job: Job, to: str | Path) -> list[Path]:
    """Copy what a job made and later steps need into `to`, laid out as under out_dir (seed{N}/rows,
    seed{N}/chunks, seed{N}/timings.jsonl, seed{N}/pretrain_log.jsonl): copying `to` over another
    machine's out_dir lets its jobs and the report carry on."""
    import shutil

    seed_dir, target = study.seed_dir(job.seed), Path(to) / f"seed{job.seed}"
    wanted = [study.rows_path(job.seed, task) for task in job.tasks]
    wanted += [seed_dir / "timings.jsonl"]
    if "pretrain" in job.tasks:
        wanted += sorted((seed_dir / "chunks").glob("*")) + [seed_dir / "base" / "pretrain_log.jsonl"]
    if "base_probe" in job.tasks:
        wanted.append(study.probe_path(job.seed))  # the probed arms of later jobs read it
    wanted += [study.lora_log_path(job.seed, t.removeprefix("arm:")) for t in job.tasks if t.startswith("arm:")]
    copied = []
    for path in (p for p in wanted if p.is_file()):
        relative = path.relative_to(seed_dir)
        dest = target / (relative.name if relative.parts[0] == "base" else relative)
        dest.parent.mkdir(parents=True, exist_ok=True)
        copied.append(Path(shutil.copy2(path, dest)))
    return copied


# ------------------------------------------------------------------------------------------
# Several seeds side by side on one GPU
# ------------------------------------------------------------------------------------------
# The miniature's model (26M parameters, 32k-token steps) leaves most of an H100/H200 idle:
# its kernels are small and its steps host-bound. Seeds, and the LoRAs of one seed once its base
# exists, are independent, so they run as separate processes ("lanes") on the same GPU.
def data_needed(study: StudyConfig, tasks: list[str]) -> list[str]:
    """The data sets (ensure_data names) that `tasks` read: written once, before lanes start."""
    names = ["eval_bins"]
    if "pretrain" in tasks:
        names += list(study.data_counts)
    if "base_probe" in tasks:
        names.append("train")
    for arm in study.arms:
        if f"arm:{arm.name}" in tasks:
            names.append("train_mix" if arm.data == "mix" else "train")
    return list(dict.fromkeys(names))


def write_task_data(study: StudyConfig, tasks: list[str]) -> dict[str, Path]:
    """The data `tasks` read, written where missing with every core (before lanes that share the
    cores start; or in a call of its own, to leave a later call's whole time to its tasks)."""
    return ensure_data(dataclasses.replace(study, num_proc=os.cpu_count()), data_needed(study, tasks))


def has_base(study: StudyConfig, seed: int) -> bool:
    return (study.seed_dir(seed) / "base" / "config.json").is_file()


def split_lanes(study: StudyConfig, tasks: list[str], lanes_per_seed: int) -> list[tuple[int, list[str]]]:
    """(seed, tasks) per lane. A seed whose base is not there yet gets one lane (pretraining
    first); otherwise its tasks not yet done are dealt over `lanes_per_seed` lanes, longest
    estimate first, each to the lane with the least estimated work. A base_probe still to run
    goes with the probed arms, which read its layers: in another lane they could start before
    it ends, and would be left for a later run."""
    lanes = []
    for seed in study.seeds:
        todo = [t for t in study.tasks() if t in tasks and not study.rows_path(seed, t).is_file()]
        if not todo:
            continue
        if "pretrain" in todo or not has_base(study, seed) or lanes_per_seed <= 1:
            lanes.append((seed, todo))
            continue
        probed = {f"arm:{a.name}" for a in study.arms if a.probed} if "base_probe" in todo else set()
        units = [[t] for t in todo if t not in probed and t != "base_probe"]
        if "base_probe" in todo:
            units.append(["base_probe", *(t for t in todo if t in probed)])
        cost = lambda tasks: sum(estimate_s(study, t) for t in tasks)  # noqa: E731
        dealt: list[list[str]] = [[] for _ in range(min(lanes_per_seed, len(units)))]
        for unit in sorted(units, key=lambda u: -cost(u)):
            min(dealt, key=cost).extend(unit)
        # Within a lane, the study's order: base_probe before the arms that read its layers.
        lanes += [(seed, sorted(lane, key=todo.index)) for lane in dealt]
    return lanes


def run_tasks(study: StudyConfig, seed: int, tasks: list[str], deadline: float | None = None, slowdown: float = 1.0):
    """Run `tasks` of `seed` in order, skipping those done and, with a `deadline` (time.time()
    seconds), those whose estimate times `slowdown` would end after it. Returns the tasks done."""
    done = []
    for task in tasks:
        if study.rows_path(seed, task).is_file():
            done.append(task)
            continue
        if task != "pretrain" and not has_base(study, seed) and not (study.seed_dir(seed) / "chunks").is_dir():
            logger.warning("Seed %d: no base, so %s is left for a later run", seed, task)
            continue
        arm = next((a for a in study.arms if f"arm:{a.name}" == task), None)
        if arm is not None and arm.probed and not study.probe_path(seed).is_file():
            logger.warning("Seed %d: %s needs base_probe's layers: left for a later run", seed, task)
            continue
        expected = estimate_s(study, task)
        if task == "pretrain" and (study.data_dir / "train.parquet").is_file():
            expected -= study.estimates.pretrain_data_s  # the data is there already (run_parallel wrote it)
        expected *= slowdown
        if deadline is not None and time.time() + expected > deadline:
            logger.warning(
                "Seed %d: %s left for a later run (~%.0f s, %.0f s left)", seed, task, expected, deadline - time.time()
            )
            continue
        run_task(study, seed, task)
        done.append(task)
    return done


def run_parallel(
    study: StudyConfig,
    study_path: str,
    tasks: list[str],
    lanes_per_seed: int = 1,
    deadline_s: float | None = None,
    slowdown: float = 1.0,
    log=print,
    grace_s: float = 30.0,
    max_running: int | None = None,
    poll_s: float = 1.0,
) -> dict[int, list[str]]:
    """The `tasks` of every seed, as lanes of `split_lanes` run side by side (one process each,
    `run_study lane`), each stopping before a task it could not end within `deadline_s`. At most
    `max_running` lanes run at once (the GPU's memory: six lanes of LoRA training ran out of an
    H200's 140 GiB); the others wait for a free place. Each lane's log goes to seed{N}/logs/.
    Returns, per seed, the tasks with rows."""
    import subprocess
    import sys

    unknown = set(tasks) - set(study.tasks())
    if unknown:
        raise ValueError(f"unknown tasks {sorted(unknown)}; tasks: {study.tasks()}")
    if max_running is not None and max_running < 1:
        raise ValueError(f"max_running must be at least 1, got {max_running}")
    deadline = time.time() + deadline_s if deadline_s else None  # the data's time counts too
    write_task_data(study, tasks)  # once, before the lanes that read it start
    root = str(Path(__file__).resolve().parents[2])  # the checkout: `experiments` from any directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    waiting = list(enumerate(split_lanes(study, tasks, lanes_per_seed)))
    running = []

    def start(number: int, seed: int, lane: list[str]):
        log_path = study.seed_dir(seed) / "logs" / f"lane{number}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "experiments.adaptation.run_study", "lane", "--study", study_path]
        command += ["--seed", str(seed), "--tasks", ",".join(lane), "--slowdown", str(slowdown)]
        command += ["--deadline", str(deadline)] if deadline else []
        log(f"lane {number}: seed {seed}: {', '.join(lane)} (log {log_path})")
        with open(log_path, "a") as out:
            # Its own process group: a lane stopped at the deadline takes its data workers with it.
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        running.append((number, log_path, process))

    def finish(number: int, log_path: Path, code):
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        log(f"lane {number}: exit {code}\n  " + "\n  ".join(tail))

    while waiting or running:
        while waiting and (max_running is None or len(running) < max_running):
            number, (seed, lane) = waiting.pop(0)
            start(number, seed, lane)
        for entry in [e for e in running if e[2].poll() is not None]:
            running.remove(entry)
            finish(entry[0], entry[1], entry[2].returncode)
        # A lane that overruns its estimates is stopped grace_s after the deadline; its task's rows
        # are written only once complete, so a rerun redoes just that task.
        if deadline is not None and time.time() > deadline + grace_s:
            for number, log_path, process in running:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                finish(number, log_path, "stopped at the deadline")
            running = []
            for number, (seed, lane) in waiting:
                log(f"lane {number}: seed {seed}: not started before the deadline: {', '.join(lane)}")
            waiting = []
        if running:
            time.sleep(poll_s)
    return {seed: [t for t in study.tasks() if study.rows_path(seed, t).is_file()] for seed in study.seeds}


def collect_all(study: StudyConfig, to: str | Path) -> list[Path]:
    """Every seed's rows, timings, pretraining and LoRA logs and lane logs (no weights) copied into `to`,
    laid out as under out_dir: what the report needs, small enough to bring back from any machine."""
    import shutil

    copied = []
    for seed in study.seeds:
        seed_dir = study.seed_dir(seed)
        wanted = [*seed_dir.glob("rows/*.jsonl"), *seed_dir.glob("logs/*.log"), seed_dir / "timings.jsonl"]
        wanted += seed_dir.glob("lora_logs/*.jsonl")
        wanted += [seed_dir / "base" / "pretrain_log.jsonl", study.probe_path(seed)]
        for path in (p for p in wanted if p.is_file()):
            relative = path.relative_to(seed_dir)
            dest = Path(to) / f"seed{seed}" / (relative.name if relative.parts[0] == "base" else relative)
            dest.parent.mkdir(parents=True, exist_ok=True)
            copied.append(Path(shutil.copy2(path, dest)))
    return copied
