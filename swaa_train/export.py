"""Export: base + LoRA adapter -> one merged model directory that carries its SWAA settings.

An adapter directory, as the trainer writes it, holds adapter_config.json and
adapter_model.safetensors (PEFT), swaa_config.json, README.md, the tokenizer and, for a
random-init base (the demo), the base itself under base-model/. The merged directory holds
the merged weights (safetensors), config.json with a `swaa_config` entry, swaa_config.json,
the tokenizer and a model card. It is written under a temporary name beside its target and
renamed at the end, so a failure leaves no half-written model behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from transformers.utils import logging

from .swaa_config import (
    ADAPTER_CONFIG_NAME,
    SWAA_CONFIG_NAME,
    SWAAConfig,
    find_swaa_config,
    has_tokenizer,
    is_adapter_dir,
    resolve_base_model,
)

logger = logging.get_logger(__name__)


# ------------------------------------------------------------------------------------------
# Merging
# ------------------------------------------------------------------------------------------
def merged_model_card(swaa: SWAAConfig, base_model: str, adapter: str) -> str:
    return f"""---
base_model: {base_model}
tags: [swaa, sliding-window-attention, swaa-train]
---
# {base_model} with its SWAA adapter merged

The LoRA adapter `{adapter}` (trained with swaa-train, Sliding Window Attention Adaptation,
arXiv 2512.10411) merged into `{base_model}`.

**SWAA settings** (`swaa_config.json`, also `swaa_config` in config.json): {swaa.describe()}.
Run the model with these settings: it was adapted to this exact attention pattern.

## How to load
```python
from swaa_train.inference import load_swaa_model, generate
model, tokenizer = load_swaa_model("<this repo or directory>")
print(generate(model, tokenizer, ["..."]))
```
"""


# The files a tokenizer is made of, in any of the layouts transformers 4.x and 5.x write.
TOKENIZER_FILE_NAMES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)


def add_legacy_config_keys(config_path: Path) -> None:
    """Write the RoPE keys older loaders read beside transformers 5's `rope_parameters`.

    transformers 4.57 (the stack of the SWAA reference code and of its vLLM 0.11 patch) reads
    `rope_theta` and `rope_scaling` only; without them it silently falls back to rope_theta
    10000 (Qwen3-4B-2507 needs 5,000,000).
    """
    config = json.loads(config_path.read_text())
    for section in [config, *(v for v in config.values() if isinstance(v, dict) and "rope_parameters" in v)]:
        rope = section.get("rope_parameters")
        if not isinstance(rope, dict) or "rope_theta" not in rope:
            continue
        section.setdefault("rope_theta", rope["rope_theta"])
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        section.setdefault("rope_scaling", None if scaling.get("rope_type", "default") == "default" else scaling)
    if "dtype" in config:
        config.setdefault("torch_dtype", config["dtype"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def copy_tokenizer_files(source: str, out: Path) -> bool:
    """Copy the tokenizer files of the base (a local directory or a Hub repo) unchanged; False if
    there are none to copy."""
    source_dir = Path(source)
    if not source_dir.is_dir():
        try:
            from huggingface_hub import snapshot_download

            source_dir = Path(snapshot_download(source, allow_patterns=list(TOKENIZER_FILE_NAMES)))
        except Exception as err:  # offline or not a Hub repo: the tokenizer is re-saved instead
            logger.warning("Tokenizer files of %s not copied (%s): re-saving the tokenizer", source, err)
            return False
    names = [n for n in TOKENIZER_FILE_NAMES if (source_dir / n).is_file()] if source_dir.is_dir() else []
    if not any(n in names for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")):
        return False
    for name in names:
        shutil.copy2(source_dir / name, out / name)
    return True


def _write_merged(adapter_dir: Path, base_model: str, swaa: SWAAConfig, out: Path, dtype: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .model import DTYPES

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=DTYPES[dtype])
    swaa.check_num_layers(base.config.get_text_config().num_hidden_layers)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.get_text_config().swaa_config = swaa.to_dict()
    merged.save_pretrained(out)
    add_legacy_config_keys(out / "config.json")
    if not copy_tokenizer_files(base_model, out):  # the base's files as they were, else the adapter's
        tokenizer_source = adapter_dir if has_tokenizer(adapter_dir) else base_model
        AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(out)
    swaa.save(out)
    (out / "README.md").write_text(merged_model_card(swaa, base_model, str(adapter_dir)))


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; an existing `out` is set aside first and removed only afterwards."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(out: Path) -> None:
    """Remove what an earlier merge into `out` left when it was killed (kill -9 skips its cleanup):
    `.NAME.tmp-*` (a partial model, as large as the model) and `.NAME.old-*` folders beside `out`."""
    for pattern in (f".{out.name}.tmp-*", f".{out.name}.old-*"):
        for stale in out.parent.glob(pattern):
            if stale.is_dir():
                logger.warning("Removing %s, left by an interrupted merge", stale)
                shutil.rmtree(stale, ignore_errors=True)


def merge_adapter(
    adapter_dir: str | Path,
    out_dir: str | Path,
    base_model: str | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Merge the LoRA adapter in `adapter_dir` into its base; write the model to `out_dir`."""
    from .model import DTYPES

    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    if not is_adapter_dir(adapter_dir):
        raise ValueError(f"adapter_dir: {adapter_dir} has no {ADAPTER_CONFIG_NAME}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if out.exists() and not overwrite:
        raise ValueError(f"out_dir: {out} already exists (pass overwrite=True / --overwrite to replace it)")
    swaa = find_swaa_config(adapter_dir)
    if swaa is None:
        raise ValueError(
            f"adapter_dir: {adapter_dir} has no {SWAA_CONFIG_NAME}; the merged model would lose its SWAA settings"
        )
    base_model = base_model or resolve_base_model(adapter_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        logger.info("Merging %s into %s", adapter_dir, base_model)
        _write_merged(adapter_dir, base_model, swaa, tmp, dtype)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Merged model (SWAA: %s) written to %s", swaa.describe(), out)
    return out


def reference_serve_args(folder: str | Path) -> list[str]:
    """The command line of the SWAA reference code's vLLM server (`serve_swaa.py`, vLLM 0.11 with
    transformers 4.57) for a merged folder, from its swaa_config.json."""
    swaa = find_swaa_config(folder)
    if swaa is None:
        raise ValueError(f"folder: {folder} has no {SWAA_CONFIG_NAME} (nor a swaa_config entry in config.json)")
    if isinstance(swaa.force_fa_decode, list):
        raise ValueError(
            f"force_fa_decode: the reference server takes true or false, not the layer list {swaa.force_fa_decode}"
        )
    args = ["python", "serve_swaa.py", "--model", str(folder), "--enforce-eager"]
    if swaa.sliding_window_size is not None:
        args += ["--sliding-window-size", str(swaa.sliding_window_size), "--keep-first", str(swaa.keep_first)]
        args += ["--force-fa-decode", str(bool(swaa.force_fa_decode))]
        if swaa.non_sliding_layers:
            args += ["--non-sliding-layers", ",".join(map(str, swaa.non_sliding_layers))]
    return args
