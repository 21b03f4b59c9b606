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

    def check_num_layers(self, num_layers: int) -> None:
        """Raise if a layer index lies outside a model of `num_layers` layers."""
        for name in ("non_sliding_layers", "force_fa_decode"):
            value = getattr(self, name)
            bad = [i for i in value if i >= num_layers] if isinstance(value, list) else []
            if bad:
                raise ValueError(f"{name}: layer index {bad} out of range for a model of {num_layers} layers")

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, num_layers: int | None = None) -> SWAAConfig:
        if not isinstance(data, dict):
            raise ValueError(f"swaa config must be a mapping, got {type(data).__name__}")
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
