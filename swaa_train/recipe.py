"""Recipes: recipes/NAME.yaml parsed into one dataclass per section, with overrides.

A recipe has one section per pipeline stage, each mapped 1:1 onto a dataclass (unknown keys
are errors); the `swaa` section is the saved-file contract `SWAAConfig`, the `training`
section TRL's own `SFTConfig`. YAML is read with YAML 1.2 scalars: only true/false are
booleans (`no`, `off` stay strings) and `1e-4` is a number.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .swaa_config import SWAAConfig, is_int, reject_unknown


# ------------------------------------------------------------------------------------------
# Recipe sections
# ------------------------------------------------------------------------------------------
@dataclass
class ModelArgs:
    name_or_path: str = field(metadata={"help": "Hub id or local directory of the base model (or of its config)."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer Hub id or path; default: the model's."})
    from_config: bool = field(
        default=False, metadata={"help": "Random-init the model from its config (demos, benchmarks): no weights read."}
    )
    dtype: str = field(default="bfloat16", metadata={"help": "Weights dtype: bfloat16, float16, float32 or auto."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub."})

    def __post_init__(self):
        if not self.name_or_path or not isinstance(self.name_or_path, str):
            raise ValueError(f"model.name_or_path must be a non-empty string, got {self.name_or_path!r}")
        if self.dtype not in ("bfloat16", "float16", "float32", "auto"):
            raise ValueError(f"model.dtype must be bfloat16, float16, float32 or auto, got {self.dtype!r}")


@dataclass
class LoraArgs:
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha/sqrt(r) with rsLoRA)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj"], metadata={"help": "Module names that get adapters."}
    )
    use_rslora: bool = field(default=True, metadata={"help": "Rank-stabilised LoRA scaling."})
    bias: str = field(default="none", metadata={"help": "PEFT bias mode: none, all or lora_only."})

    def __post_init__(self):
        if not is_int(self.r) or self.r <= 0:
            raise ValueError(f"lora.r must be a positive int, got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules or not all(isinstance(m, str) for m in self.target_modules):
            raise ValueError(f"lora.target_modules must be a non-empty list of names, got {self.target_modules!r}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(f"lora.bias must be none, all or lora_only, got {self.bias!r}")


@dataclass
class DataArgs:
    path: str = field(
        metadata={"help": "Hub dataset id, local file/directory (parquet, json, jsonl, csv), or 'synthetic'."}
    )
    split: str = field(default="train", metadata={"help": "Dataset split."})
    format: str = field(
        default="auto",
        metadata={"help": "Row layout: auto, fusang_long, messages, prompt_completion or instruction_output."},
    )
    min_length: int = field(default=0, metadata={"help": "Drop samples shorter than this many tokens."})
    max_length: int | None = field(default=None, metadata={"help": "Drop samples longer than this many tokens."})
    judge_filter: bool = field(default=True, metadata={"help": "fusang_long: keep only rows with judge == 1."})
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message for every sample."})
    max_samples: int | None = field(default=None, metadata={"help": "Use at most this many rows."})
    num_proc: int | None = field(default=None, metadata={"help": "Processes that tokenize the rows."})
    synthetic_rows: int = field(default=64, metadata={"help": "path: synthetic: number of generated rows."})
    synthetic_words: list[int] = field(
        default_factory=lambda: [300, 600], metadata={"help": "path: synthetic: [min, max] prompt length in words."}
    )
    synthetic_seed: int = field(default=0, metadata={"help": "path: synthetic: generator seed."})
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Chat template (Jinja) the rows are rendered with: a file path (e.g. a .jinja file) or the "
            "template inline. Applied before tokenizing and saved with the tokenizer; default: the tokenizer's."
        },
    )
    eval_path: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation rows (Hub dataset id or local file/directory, same layouts as path), tokenized and "
            "filtered like the training rows; their loss is logged as eval_loss at training.eval_strategy."
        },
    )
    eval_split: str = field(default="test", metadata={"help": "eval_path: dataset split."})
    eval_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Instead of eval_path: hold out this fraction (0..1) of the training samples for evaluation."
        },
    )

    def __post_init__(self):
        formats = ("auto", "fusang_long", "messages", "prompt_completion", "instruction_output")
        if self.format not in formats:
            raise ValueError(f"data.format must be one of {formats}, got {self.format!r}")
        if not is_int(self.min_length) or self.min_length < 0:
            raise ValueError(f"data.min_length must be a non-negative int, got {self.min_length!r}")
        if self.max_length is not None and (not is_int(self.max_length) or self.max_length < self.min_length):
            raise ValueError(f"data.max_length must be an int >= min_length, got {self.max_length!r}")
        if self.chat_template is not None and (
            not isinstance(self.chat_template, str) or not self.chat_template.strip()
        ):
            raise ValueError(f"data.chat_template must be a file path or a Jinja template, got {self.chat_template!r}")
        f = self.eval_fraction
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1):
            raise ValueError(f"data.eval_fraction must be a number between 0 and 1 (exclusive), got {f!r}")
        if f is not None and self.eval_path is not None:
            raise ValueError(f"data.eval_fraction ({f!r}) and data.eval_path ({self.eval_path!r}): set one, not both")
        w = self.synthetic_words
        if not (isinstance(w, (list, tuple)) and len(w) == 2 and all(is_int(x) and x > 0 for x in w) and w[0] <= w[1]):
            raise ValueError(f"data.synthetic_words must be [min, max] positive ints, got {w!r}")


@dataclass
class ExportArgs:
    merge: bool = field(
        default=False, metadata={"help": "After training, also write base + adapter merged into <output_dir>/merged."}
    )
    model_card: bool = field(default=True, metadata={"help": "Write a README.md model card beside the adapter."})


@dataclass
class MemoryArgs:
    """Long-sequence memory techniques (swaa_train/memory.py). Each is exact: same loss, same gradients."""

    liger_kernel: bool | str = field(
        default="auto",
        metadata={
            "help": "Liger's fused RMSNorm, SwiGLU and RoPE kernels, through TRL's training.use_liger_kernel. "
            "auto: on with CUDA and liger-kernel installed; true: on (error if it cannot run); false: leave "
            "training.use_liger_kernel as it is."
        },
    )
    activation_offloading: bool | str = field(
        default="auto",
        metadata={
            "help": "Keep each checkpointed layer's input in pinned CPU memory (TRL's training.activation_offloading). "
            "auto: on with CUDA and gradient checkpointing; true: on; false: leave training.activation_offloading."
        },
    )
    offload_limit_gib: float | str = field(
        default="auto",
        metadata={
            "help": "With activation offloading, at most this many GiB of one step's saved activations go to pinned "
            "host memory (the first layers' inputs, needed last in the backward); the rest stay on the GPU. auto: half "
            "the host's memory, shared by the processes of the node; a number: that limit."
        },
    )
    expandable_segments: bool = field(
        default=True,
        metadata={"help": "PyTorch's expandable-segments CUDA allocator, against fragmentation at long sequences."},
    )

    def __post_init__(self):
        for name in ("liger_kernel", "activation_offloading"):
            value = getattr(self, name)
            if not isinstance(value, bool) and value != "auto":
                raise ValueError(f"memory.{name} must be true, false or auto, got {value!r}")
        limit = self.offload_limit_gib
        if limit != "auto" and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0):
            raise ValueError(f"memory.offload_limit_gib must be auto or a number >= 0, got {limit!r}")
        if not isinstance(self.expandable_segments, bool):
            raise ValueError(f"memory.expandable_segments must be true or false, got {self.expandable_segments!r}")


SECTIONS = ("model", "swaa", "lora", "data", "training", "export", "memory")


@dataclass
class Recipe:
    """A whole training run: recipes/NAME.yaml parsed into one dataclass per section."""

    model: ModelArgs
    swaa: SWAAConfig
    lora: LoraArgs
    data: DataArgs
    training: Any  # trl.SFTConfig
    export: ExportArgs = field(default_factory=ExportArgs)
    memory: MemoryArgs = field(default_factory=MemoryArgs)
    name: str = "custom"


# ------------------------------------------------------------------------------------------
# Loading a recipe
# ------------------------------------------------------------------------------------------
PACKAGE_DIR = Path(__file__).resolve().parent
# Recipes ship in the wheel as the package data `swaa_train/recipes/*.yaml`; in a source
# checkout they are the top-level recipes/ folder.
RECIPE_DIRS = (PACKAGE_DIR / "recipes", PACKAGE_DIR.parent / "recipes")


def shipped_recipes() -> dict[str, Path]:
    """Recipe name -> YAML file of the recipes that come with the package."""
    found: dict[str, Path] = {}
    for directory in RECIPE_DIRS:
        for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
            found.setdefault(path.stem, path)
    return found


def resolve_recipe_path(name_or_path: str) -> Path:
    """A YAML path as given, else ./recipes/NAME.yaml, else the shipped recipe NAME."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    local = Path("recipes") / f"{name_or_path}.yaml"
    if local.is_file():
        return local
    shipped = shipped_recipes()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise ValueError(f"recipe {name_or_path!r}: no such file and no recipe of that name; known: {sorted(shipped)}")


def resolve_packaged_path(path: str) -> str:
    """`swaa_train/...` paths in a recipe (the demo's shipped model config) work from any directory."""
    if path.startswith("swaa_train/") and not Path(path).exists():
        packaged = PACKAGE_DIR / path.removeprefix("swaa_train/")
        if packaged.exists():
            return str(packaged)
    return path


class _Loader(yaml.SafeLoader):
    """YAML 1.2 core-schema scalars on PyYAML's safe loader (which implements YAML 1.1).

    Only true/false are booleans (YAML 1.1 also reads yes/no/on/off, so `save_strategy=no`
    became False), `1e-4` is a float (1.1 wants `1.0e-4`), and dates stay strings.
    """


_DROPPED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text the way recipes, overrides and evaluation settings are read."""
    return yaml.load(text, Loader=_Loader)


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML spreads it over several)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def load_yaml_file(path: Path) -> Any:
    """A YAML file, with an error naming the file (and line) when it is not valid YAML."""
    try:
        return load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


# ------------------------------------------------------------------------------------------
# Secrets: a token given in a recipe is used, never written
# ------------------------------------------------------------------------------------------
# Field names that hold a credential: training.hub_token, and any *_token / *_key / *secret /
# *password a recipe or a card carries; the tokenizer's special-token fields are not secrets.
SECRET_NAME = re.compile(r"(?:^|_)(?:token|key|secret|password|passwd|credentials?)$", re.IGNORECASE)
NOT_SECRET = {f"{name}_token" for name in ("pad", "eos", "bos", "unk", "sep", "cls", "mask")}
MASK = "<hidden>"
# `name: value` / `name=value` / `"name": "value"` in text (a model card's YAML, a log line).
_SECRET_IN_TEXT = re.compile(
    r"""(?P<key>["']?(?P<name>[A-Za-z0-9_]+)["']?[ \t]*[:=][ \t]*)(?P<value>["']?[^\s"',}]+["']?)"""
)


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and name.lower() not in NOT_SECRET


def mask_secrets(value: Any) -> Any:
    """A copy of a recipe mapping (or any nest of dicts and lists) with every secret value masked."""
    if isinstance(value, dict):
        return {
            k: MASK if is_secret_name(str(k)) and v not in (None, "") else mask_secrets(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def mask_secret_text(text: str) -> str:
    """`text` with the value of every `secret_name: value` (or `=`) masked; other text unchanged."""

    def replace(match: re.Match) -> str:
        value = match["value"].strip("\"'")
        if not is_secret_name(match["name"]) or value in ("", "null", "None", "~", MASK):
            return match[0]
        return match["key"] + MASK

    return _SECRET_IN_TEXT.sub(replace, text)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply command-line overrides `section.field=value` (value parsed as YAML) to a raw recipe."""
    raw = {section: dict(values or {}) for section, values in raw.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"override {item!r}: expected section.field=value, e.g. training.max_steps=10")
        if section not in SECTIONS:
            raise ValueError(f"override {item!r}: unknown section {section!r}; sections: {list(SECTIONS)}")
        try:
            parsed = load_yaml(value) if value != "" else None
        except yaml.YAMLError as err:
            raise ValueError(f"override {key}=...: the value is not valid YAML: {yaml_problem(err)}") from None
        raw.setdefault(section, {})[name] = parsed
    return raw


# ------------------------------------------------------------------------------------------
# Field checks that need more than one field, or a field's declared type
# ------------------------------------------------------------------------------------------
# Values a field takes beyond its declared type: `resume_from_checkpoint: true` (the newest checkpoint).
ALSO_ACCEPTED = {("training", "resume_from_checkpoint"): bool}
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _accepts(kind, value) -> bool | None:
    """Whether `value` fits the declared type `kind`; None when the type is not a plain one."""
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        return value in typing.get_args(kind)
    if origin is not None:  # list[str], dict[str, Any]: the container only
        return isinstance(value, origin) if isinstance(origin, type) else None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return is_int(value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (str, type(None)) or (isinstance(kind, type) and issubclass(kind, enum.Enum)):
        return isinstance(value, str) if kind is not type(None) else value is None
    return None  # a class of its own (e.g. ParallelismConfig): left to the dataclass


def check_field_types(cls, values: dict, section: str) -> None:
    """Refuse a value whose type the field does not declare: `export.merge=maybe` is not a bool,
    `training.learning_rate=abc` not a number. Fields of other types are left to `cls`."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        kind = hints.get(name)
        if kind is None or isinstance(value, ALSO_ACCEPTED.get((section, name), ())):
            continue
        members = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
        verdicts = [_accepts(member, value) for member in members]
        if None in verdicts or any(verdicts):
            continue
        expected = " or ".join(dict.fromkeys(_TYPE_WORDS.get(m, getattr(m, "__name__", str(m))) for m in members))
        shown = MASK if is_secret_name(name) else repr(value)  # an error message is printed
        raise ValueError(f"{section}.{name} must be {expected}, got {shown}")


def check_recipe(recipe: Recipe) -> None:
    """Settings that each pass their own field's check but cannot train anything together."""
    swaa, training, data = recipe.swaa, recipe.training, recipe.data
    window = swaa.sliding_window_size
    if window is not None and swaa.keep_first >= window:
        raise ValueError(
            f"swaa.keep_first={swaa.keep_first} must be smaller than swaa.sliding_window_size={window} "
            "(sinks are the few first tokens kept visible beside the window)"
        )
    if training.max_steps == -1:
        if not training.num_train_epochs > 0:
            raise ValueError(
                f"training.num_train_epochs must be positive when training.max_steps=-1, got {training.num_train_epochs!r}"
            )
    elif training.max_steps <= 0:
        raise ValueError(
            f"training.max_steps must be a positive number of steps, or -1 to train "
            f"training.num_train_epochs epochs; got {training.max_steps}"
        )
    if data.max_samples is not None and data.max_samples < 1:
        raise ValueError(f"data.max_samples must be a positive int or null, got {data.max_samples!r}")


def check_local_model_path(path: str, field_name: str) -> None:
    """A path that can only be a local folder (absolute, ./, ~, or under an existing folder) must exist."""
    local = Path(path).expanduser()
    if local.exists():
        return
    first = Path(path).parts[0] if Path(path).parts else ""
    looks_local = (
        path.startswith(("/", ".", "~", "\\"))
        or path.count("/") > 1
        or (len(Path(path).parts) > 1 and Path(first).is_dir())
    )
    if looks_local:
        raise ValueError(f"{field_name}: the folder {path} does not exist")


def _section(cls, raw: dict, name: str):
    values = raw.get(name) or {}
    if not isinstance(values, dict):
        raise ValueError(f"recipe section {name!r} must be a mapping, got {type(values).__name__}")
    reject_unknown(cls, values, f"recipe section {name!r}")
    check_field_types(cls, values, name)
    try:
        return cls(**values)
    except TypeError as err:  # a required field is missing
        raise ValueError(f"recipe section {name!r}: {err}") from None
    except ValueError as err:  # the dataclass's own check (TrainingArguments' do not name the field)
        message = str(err)
        raise ValueError(message if message.startswith(f"{name}.") else f"recipe section {name!r}: {message}") from None


def build_recipe(raw: dict, name: str = "custom") -> Recipe:
    """Validate a raw recipe mapping and build its dataclasses; errors name the section and field."""
    from trl import SFTConfig

    if not isinstance(raw, dict):
        raise ValueError("a recipe must be a YAML mapping of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"recipe: unknown section(s) {unknown}; sections: {list(SECTIONS)}")
    for required in ("model", "data"):
        if not raw.get(required):
            raise ValueError(f"recipe: section {required!r} is required")
    try:
        swaa = SWAAConfig.from_dict(raw.get("swaa") or {})
    except (TypeError, ValueError) as err:
        raise ValueError(f"recipe section 'swaa': {err}") from None
    model = _section(ModelArgs, raw, "model")
    model.name_or_path = resolve_packaged_path(model.name_or_path)
    check_local_model_path(model.name_or_path, "model.name_or_path")
    if model.tokenizer:
        model.tokenizer = resolve_packaged_path(model.tokenizer)
        check_local_model_path(model.tokenizer, "model.tokenizer")
    memory = _section(MemoryArgs, raw, "memory")
    if memory.expandable_segments:
        # The CUDA allocator reads its settings once, when CUDA starts, and building TRL's
        # SFTConfig below may start it: ask for expandable segments first.
        from .memory import use_expandable_segments

        use_expandable_segments()
    recipe = Recipe(
        model=model,
        swaa=swaa,
        lora=_section(LoraArgs, raw, "lora"),
        data=_section(DataArgs, raw, "data"),
        training=_section(SFTConfig, raw, "training"),
        export=_section(ExportArgs, raw, "export"),
        memory=memory,
        name=name,
    )
    check_recipe(recipe)
    return recipe


SECRET_FIELDS = ("hub_token",)


def resolved_recipe(recipe: Recipe, raw: dict) -> dict:
    """The recipe as run, saved as recipe.yaml: every field of this package's sections (defaults
    filled in), each value as the recipe file and overrides wrote it; `training` lists the
    SFTConfig fields that were set (TRL's defaults for the rest). `--config recipe.yaml` reruns it."""
    resolved = {}
    for section in SECTIONS:
        given = dict(raw.get(section) or {})
        if section != "training":
            given = {**dataclasses.asdict(getattr(recipe, section)), **given}
        else:  # recipe.yaml goes up with every Hub push: the token stays out of it
            given = {k: v for k, v in given.items() if k not in SECRET_FIELDS}
        if given:
            resolved[section] = given
    return resolved


def recipe_fields() -> dict[str, list[dataclasses.Field]]:
    """Section name -> the init fields of its dataclass (the `training` section: TRL's SFTConfig)."""
    from trl import SFTConfig

    classes = {
        "model": ModelArgs,
        "swaa": SWAAConfig,
        "lora": LoraArgs,
        "data": DataArgs,
        "training": SFTConfig,
        "export": ExportArgs,
        "memory": MemoryArgs,
    }
    return {section: [f for f in dataclasses.fields(classes[section]) if f.init] for section in SECTIONS}


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> tuple[Recipe, dict]:
    """Read recipes/NAME.yaml (or a path), apply overrides; return the recipe and its raw mapping."""
    path = resolve_recipe_path(name_or_path)
    raw = load_yaml_file(path) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    return build_recipe(raw, name=path.stem), raw
