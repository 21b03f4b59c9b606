"""A merged folder loads in the reference SWAA stack's transformers (4.57) with the same tokens
and logits as in 5.x: RoPE keys older loaders read, the base's tokenizer files as they were.

CI installs transformers 4.57 into a separate directory and names it in
SWAA_LEGACY_TRANSFORMERS (see .ci/run); without it the cross-version test skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_export import DEMO_ASSETS, DEMO_SWAA
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from swaa_train.export import add_legacy_config_keys, merge_adapter

LEGACY = os.environ.get("SWAA_LEGACY_TRANSFORMERS")
TEXT = "the amber vault opens at dawn"


def _adapter_with_rope_theta(root: Path, rope_theta: float) -> Path:
    """A demo adapter whose base uses a non-default rope_theta, as Qwen3-4B-2507 does (5e6)."""
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(DEMO_ASSETS)
    config.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    adapter = root / "adapter"
    base.save_pretrained(adapter / "base-model")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (adapter / "base-model" / name).write_bytes((DEMO_ASSETS / name).read_bytes())
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(adapter)
    DEMO_SWAA.save(adapter)
    return adapter


def test_legacy_rope_keys_beside_rope_parameters(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"rope_parameters": {"rope_type": "yarn", "rope_theta": 5e6, "factor": 4.0}}))
    add_legacy_config_keys(path)
    config = json.loads(path.read_text())
    assert config["rope_theta"] == 5e6 and config["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0}
    assert config["rope_parameters"]["rope_theta"] == 5e6  # the v5 key stays


def test_merged_folder_keeps_the_base_tokenizer_files(tmp_path):
    out = merge_adapter(_adapter_with_rope_theta(tmp_path, 5e6), tmp_path / "merged")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (DEMO_ASSETS / name).read_bytes(), name
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 5e6 and config["rope_scaling"] is None


LEGACY_SCRIPT = """
import sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
assert transformers.__version__.startswith("4.57"), transformers.__version__
folder, text, out = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, attn_implementation="eager").eval()
ids = tokenizer(text, return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(ids).logits
torch.save({"ids": ids, "logits": logits, "rope_theta": model.config.rope_theta}, out)
"""


@pytest.mark.skipif(not LEGACY, reason="SWAA_LEGACY_TRANSFORMERS (a transformers 4.57 install) is not set")
def test_merged_model_loads_in_transformers_457_with_the_same_tokens_and_logits(tmp_path):
    out = merge_adapter(_adapter_with_rope_theta(tmp_path, 5e6), tmp_path / "merged")
    result = tmp_path / "legacy.pt"
    env = {**os.environ, "PYTHONPATH": LEGACY}
    done = subprocess.run(
        [sys.executable, "-c", LEGACY_SCRIPT, str(out), TEXT, str(result)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    legacy = torch.load(result)
    assert legacy["rope_theta"] == 5e6
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert torch.equal(legacy["ids"], ids)
    with torch.no_grad():
        logits = model(ids).logits
    torch.testing.assert_close(legacy["logits"], logits, atol=1e-4, rtol=1e-4)


def test_serve_args_follow_the_folders_swaa_config(tmp_path, capsys):
    from swaa_train.cli import main
    from swaa_train.swaa_config import SWAAConfig

    folder = tmp_path / "merged"
    SWAAConfig(2048, 100, True, [1, 3, 5]).save(folder)
    main(["serve-args", str(folder)])
    printed = capsys.readouterr().out.split()
    assert printed[:5] == ["python", "serve_swaa.py", "--model", str(folder), "--enforce-eager"]
    flags = dict(zip(printed[5::2], printed[6::2]))
    assert flags == {
        "--sliding-window-size": "2048",
        "--keep-first": "100",
        "--force-fa-decode": "True",
        "--non-sliding-layers": "1,3,5",
    }
    SWAAConfig(2048, 100, [0, 2], []).save(folder)  # per-layer FA decode: the reference cannot serve it
    with pytest.raises(SystemExit):
        main(["serve-args", str(folder)])
    assert "force_fa_decode" in capsys.readouterr().err
