"""Export: base + LoRA adapter -> one merged model directory that carries its SWAA settings.

An adapter directory, as the trainer writes it, holds adapter_config.json and
adapter_model.safetensors (PEFT), swaa_config.json, README.md, the tokenizer and, for a
random-init base (the demo), the base itself under base-model/. The merged directory holds
the merged weights (safetensors), config.json with a `swaa_config` entry, swaa_config.json,
the tokenizer and a model card. It is written under a temporary name beside its target and
renamed at the end, so a failure leaves no half-written model behind.
"""

from __future__ import annotations

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


def _write_merged(adapter_dir: Path, base_model: str, swaa: SWAAConfig, out: Path, dtype: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .model import DTYPES

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=DTYPES[dtype])
    swaa.check_num_layers(base.config.get_text_config().num_hidden_layers)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.get_text_config().swaa_config = swaa.to_dict()
    merged.save_pretrained(out)
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
