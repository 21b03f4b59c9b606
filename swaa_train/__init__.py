"""swaa-train: Sliding Window Attention Adaptation (SWAA, arXiv 2512.10411) by LoRA fine-tuning.

The pipeline, one module each: swaa_config (the saved contract) -> recipe -> data ->
attention / model / memory -> trainer -> run -> export / hub -> inference -> evaluate / distill
(layer_probe: which layers keep full attention);
cli is the command line. The public API is below; heavy modules load on first use.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("swaa-train")
except PackageNotFoundError:  # a checkout used without installing it
    __version__ = "0.0.0+unknown"

# Public name -> the module that defines it.
_PUBLIC = {
    "SWAAConfig": "swaa_config",
    "load_recipe": "recipe",
    "apply_swaa": "attention",
    "SWAATrainer": "trainer",
    "run_training": "run",
    "merge_adapter": "export",
    "load_swaa_model": "inference",
    "generate": "inference",
    "probe_full_layers": "layer_probe",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
