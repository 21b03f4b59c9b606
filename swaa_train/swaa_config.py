"""The saved-file contract: `SWAAConfig` (swaa_config.json) and where to find it.

`SWAAConfig` uses the field names of the SWAA reference code, so its inference patches can
read the same file. It is saved beside every adapter and merged model; the helpers below find
it (and the base model an adapter was trained on) in a directory or on the Hub.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)

SWAA_CONFIG_NAME = "swaa_config.json"


def field_names(cls) -> set[str]:
    """The constructor fields of a dataclass."""
    return {f.name for f in dataclasses.fields(cls) if f.init}


def reject_unknown(cls, data: dict, where: str) -> None:
    """Unknown keys are errors that name them, never silently dropped."""
    unknown = sorted(set(data) - field_names(cls))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(field_names(cls))}")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class SWAAConfig:
    """How each layer attends. Saved as swaa_config.json beside every adapter and merged model."""

    sliding_window_size: int | None = field(
        default=None,
        metadata={"help": "Keys each query sees in sliding layers, itself included; None = full attention."},
    )
    keep_first: int = field(
        default=0, metadata={"help": "Sink tokens: the first keep_first keys of a sequence stay visible."}
    )
    force_fa_decode: bool | list[int] = field(
        default=False,
        metadata={
            "help": "FA decode: answer/generated tokens attend to all keys. True for every layer, "
            "or a list of the layer indices that do it."
        },
    )
    non_sliding_layers: list[int] = field(
        default_factory=list, metadata={"help": "Layer indices that keep full attention (interleaving)."}
    )

    def __post_init__(self):
        w = self.sliding_window_size
        if w is not None and (not is_int(w) or w <= 0):
            raise ValueError(f"sliding_window_size must be a positive int or null, got {w!r}")
        if not is_int(self.keep_first) or self.keep_first < 0:
            raise ValueError(f"keep_first must be a non-negative int, got {self.keep_first!r}")
        fa = self.force_fa_decode
        if not isinstance(fa, bool):
            if not isinstance(fa, (list, tuple)) or not all(is_int(i) and i >= 0 for i in fa):
                raise ValueError(f"force_fa_decode must be a bool or a list of layer indices, got {fa!r}")
            self.force_fa_decode = sorted(set(fa))
        nsl = self.non_sliding_layers
        if not isinstance(nsl, (list, tuple)) or not all(is_int(i) and i >= 0 for i in nsl):
            raise ValueError(f"non_sliding_layers must be a list of layer indices, got {nsl!r}")
        self.non_sliding_layers = sorted(set(nsl))

    # -- per-layer resolution -------------------------------------------------------------
    def layer_window(self, layer_idx: int) -> int | None:
        """The window of layer `layer_idx`, or None where it keeps full attention."""
        if self.sliding_window_size is None or layer_idx in self.non_sliding_layers:
            return None
        return self.sliding_window_size

    def layer_fa_decode(self, layer_idx: int) -> bool:
        if isinstance(self.force_fa_decode, bool):
            return self.force_fa_decode
        return layer_idx in self.force_fa_decode

    def check_num_layers(self, num_layers: int) -> dict[str, list[int]]:
        """Warn about layer indices past a model of `num_layers` layers; return them per field.

        They are ignored, not errors: the SWAA reference publishes settings for its deepest
        model (e.g. non_sliding_layers 1, 3, ..., 47) and runs them on shallower ones, where a
        layer that does not exist simply never asks. The indices stay in the config (and in
        swaa_config.json), so the file still reads as it was written.
        """
        ignored = {}
        for name in ("non_sliding_layers", "force_fa_decode"):
            value = getattr(self, name)
            past = [i for i in value if i >= num_layers] if isinstance(value, list) else []
            if past:
                ignored[name] = past
                logger.warning_once(
                    f"{name}: layer index {past} past the last layer of a model of {num_layers} layers; ignored"
                )
        return ignored

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data, num_layers: int | None = None) -> SWAAConfig:
        """Settings from a mapping, or from an object with the same fields (`settings_mapping`)."""
        data = settings_mapping(data)
        reject_unknown(cls, data, "swaa config")
        config = cls(**data)
        if num_layers is not None:
            config.check_num_layers(num_layers)
        return config

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / SWAA_CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, num_layers: int | None = None) -> SWAAConfig:
        """Read swaa_config.json (a file, or a directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / SWAA_CONFIG_NAME
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, num_layers=num_layers)

    def describe(self) -> str:
        """One line for logs and model cards."""
        if self.sliding_window_size is None:
            return "full attention (no sliding window)"
        parts = [f"window {self.sliding_window_size}", f"keep_first {self.keep_first}"]
        fa = self.force_fa_decode
        parts.append("FA decode" if fa is True else f"FA decode on layers {fa}" if fa else "no FA decode")
        if self.non_sliding_layers:
            parts.append(f"full-attention layers {self.non_sliding_layers}")
        return ", ".join(parts)


def settings_mapping(value) -> dict:
    """The SWAA settings of `value` as a plain mapping.

    Accepts a mapping, this package's `SWAAConfig`, or a config object written for the SWAA
    reference code: its `SWAAConfig` dataclass (with a `dict()` method), attached to
    `model.config.swaa_config` as the reference does, or any object with those attributes.
    """
    if isinstance(value, dict):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    for method in ("to_dict", "dict"):
        if callable(getattr(value, method, None)):
            data = getattr(value, method)()
            if isinstance(data, dict):
                return data
    names = sorted(field_names(SWAAConfig))
    if value is not None and any(hasattr(value, name) for name in names):
        return {name: getattr(value, name) for name in names if hasattr(value, name)}
    raise ValueError(f"swaa config must be a mapping or an object with the fields {names}, got {type(value).__name__}")


def normalize_model_swaa_config(model) -> SWAAConfig | None:
    """Turn a settings object on `model.config.swaa_config` (the reference's way) into a mapping.

    transformers writes configs as JSON and the attention reads the entry as JSON, so an
    object there raises "not JSON serializable"; the mapping carries the same settings.
    Returns the settings, or None where the model's config has none.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    holders = list({id(model.config): model.config, id(config): config}.values())  # one, or outer + text
    raw = next((c.swaa_config for c in holders if getattr(c, "swaa_config", None) is not None), None)
    if raw is None:
        return None
    swaa = SWAAConfig.from_dict(raw)
    for holder in holders:
        if getattr(holder, "swaa_config", None) is not None:
            holder.swaa_config = swaa.to_dict()
    return swaa


# ------------------------------------------------------------------------------------------
# Finding the config of a model or adapter directory
# ------------------------------------------------------------------------------------------
ADAPTER_CONFIG_NAME = "adapter_config.json"
RANDOM_BASE_DIR = "base-model"  # where run.py keeps a random-init base beside its adapter
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG_NAME).is_file()


def has_tokenizer(path: str | Path) -> bool:
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def resolve_base_model(adapter_dir: str | Path) -> str:
    """The base an adapter was trained on: its saved random-init base if any, else PEFT's record."""
    adapter_dir = Path(adapter_dir)
    if (adapter_dir / RANDOM_BASE_DIR / "config.json").is_file():
        return str(adapter_dir / RANDOM_BASE_DIR)
    if not is_adapter_dir(adapter_dir):
        raise ValueError(f"adapter_dir: {adapter_dir} has no {ADAPTER_CONFIG_NAME}")
    base = json.loads((adapter_dir / ADAPTER_CONFIG_NAME).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_dir / ADAPTER_CONFIG_NAME}: base_model_name_or_path is empty; pass the base model")
    return base


def _hub_file(repo_id: str, filename: str) -> str | None:
    """A file of a Hub repo, or None when the repo, the file or the network is missing."""
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        return None
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename)
    except Exception as err:  # offline, no such repo or file: all mean "no config here"
        logger.debug("No %s in %s: %s", filename, repo_id, err)
        return None


def find_swaa_config(path: str | Path) -> SWAAConfig | None:
    """The SWAA settings saved with a model or adapter (swaa_config.json, else config.json's entry)."""
    local = Path(path)
    if local.is_dir():
        if (local / SWAA_CONFIG_NAME).is_file():
            return SWAAConfig.load(local)
        config_file = local / "config.json"
        entry = json.loads(config_file.read_text()).get("swaa_config") if config_file.is_file() else None
        return SWAAConfig.from_dict(entry) if entry is not None else None
    downloaded = _hub_file(str(path), SWAA_CONFIG_NAME)
    return SWAAConfig.load(downloaded) if downloaded else None
