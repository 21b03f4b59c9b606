"""Merging base + adapter: same logits, SWAA settings and tokenizer carried, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from swaa_train.attention import apply_swaa
from swaa_train.export import merge_adapter
from swaa_train.inference import load_swaa_model
from swaa_train.swaa_config import SWAAConfig, find_swaa_config, resolve_base_model

DEMO_ASSETS = Path(__file__).resolve().parent.parent / "swaa_train" / "assets" / "tiny-qwen3"
DEMO_SWAA = SWAAConfig(sliding_window_size=16, keep_first=4, force_fa_decode=True, non_sliding_layers=[1])


def make_adapter_dir(root: Path, swaa: SWAAConfig = DEMO_SWAA, seed: int = 0) -> Path:
    """An adapter directory laid out as the trainer writes it for the demo (random-init base
    kept in base-model/), with a LoRA whose B is non-zero so that merging changes the weights."""
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(DEMO_ASSETS)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(DEMO_ASSETS)
    adapter_dir = root / "adapter"
    base.save_pretrained(adapter_dir / "base-model")
    tokenizer.save_pretrained(adapter_dir / "base-model")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(adapter_dir)
    swaa.save(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    (adapter_dir / "README.md").write_text("# demo adapter\n")
    return adapter_dir


@pytest.fixture
def adapter_dir(tmp_path):
    return make_adapter_dir(tmp_path)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_logits_equal_base_plus_adapter(adapter_dir, tmp_path):
    out = merge_adapter(adapter_dir, tmp_path / "merged")
    ids = torch.randint(3, 2000, (2, 48), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(resolve_base_model(adapter_dir), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(adapter_dir))
    apply_swaa(with_adapter.get_base_model(), DEMO_SWAA)
    merged, _ = load_swaa_model(str(out))
    expected = _logits(with_adapter, ids)
    torch.testing.assert_close(_logits(merged, ids), expected, atol=1e-4, rtol=1e-4)
    with with_adapter.disable_adapter():  # the adapter does change the model
        assert not torch.allclose(_logits(with_adapter, ids), expected, atol=1e-3)


def test_merged_directory_carries_swaa_config_and_tokenizer(adapter_dir, tmp_path):
    out = merge_adapter(adapter_dir, tmp_path / "merged")
    assert json.loads((out / "config.json").read_text())["swaa_config"] == DEMO_SWAA.to_dict()
    assert SWAAConfig.load(out) == DEMO_SWAA
    assert list(out.glob("*.safetensors")) and not list(out.glob("adapter_*"))
    assert "SWAA settings" in (out / "README.md").read_text()
    model, tokenizer = load_swaa_model(str(out))
    assert model.config.swaa_config == DEMO_SWAA.to_dict()
    assert model.config._attn_implementation == "swaa"
    assert tokenizer.encode("the amber vault") == AutoTokenizer.from_pretrained(adapter_dir).encode("the amber vault")
    # config.json alone is enough to find the settings
    (out / "swaa_config.json").unlink()
    assert find_swaa_config(out) == DEMO_SWAA


def test_interrupted_merge_leaves_nothing(adapter_dir, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("swaa_train.export.copy_tokenizer_files", fail)  # after the weights are written
    parent = tmp_path / "exports"
    with pytest.raises(RuntimeError, match="disk full"):
        merge_adapter(adapter_dir, parent / "merged")
    assert list(parent.iterdir()) == []


def test_existing_output_needs_overwrite(adapter_dir, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(ValueError, match="out_dir"):
        merge_adapter(adapter_dir, out)
    merge_adapter(adapter_dir, out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged"]


def test_missing_swaa_config_is_an_error(adapter_dir, tmp_path):
    (adapter_dir / "swaa_config.json").unlink()
    with pytest.raises(ValueError, match="swaa_config.json"):
        merge_adapter(adapter_dir, tmp_path / "merged")


def test_a_killed_merge_leaves_nothing_after_the_next_one(adapter_dir, tmp_path):
    """kill -9 skips the cleanup: the next merge into the same place removes what it left."""
    parent = tmp_path / "exports"
    left = [parent / ".merged.tmp-k1ll3d", parent / ".merged.old-k1ll3d"]
    for folder in left:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"partial")
    (parent / ".other.tmp-keep").mkdir()  # another target's temporary folder is not ours to remove
    merge_adapter(adapter_dir, parent / "merged")
    assert sorted(p.name for p in parent.iterdir()) == [".other.tmp-keep", "merged"]
