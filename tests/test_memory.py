"""Memory techniques: each switch leaves the loss and the LoRA gradients unchanged."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_model
from peft import LoraConfig, get_peft_model
from trl import SFTConfig
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from swaa_train.attention import apply_swaa
from swaa_train.config import MemoryArgs, SWAAConfig, build_recipe
from swaa_train.memory import (
    OWN_FORWARD, MemoryCallback, TiledMLPFunction, apply_memory, configure_training, is_mlp, tile_mlps,
)
from swaa_train.trainer import IGNORE_INDEX, FullFromCollator

SWAA = SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=True, non_sliding_layers=[1])
LORA_EVERYWHERE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CPU_ARGS = {"bf16": False, "use_cpu": True, "report_to": "none"}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def packed_batch(lengths=(23, 9, 30), answer=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(1, VOCAB, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n - answer) + ids[n - answer:]})
    return FullFromCollator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))(examples)


def lora_model(targets=LORA_EVERYWHERE, checkpointing=True, seed=0, device="cpu"):
    model = apply_swaa(tiny_model("qwen3", seed=seed), SWAA).to(device)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_rslora=True,
                                             init_lora_weights=False))  # B != 0: every LoRA weight gets a gradient
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model.train()


def loss_and_grads(model, batch, context=None):
    model.zero_grad(set_to_none=True)
    batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    with context if context is not None else torch.enable_grad():
        loss = model(**batch).loss
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    return loss.detach(), grads


def assert_same(reference, other, atol=1e-6, rtol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = reference, other
    torch.testing.assert_close(loss_b, loss_a, atol=atol, rtol=rtol)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=atol, rtol=rtol, msg=name)


# ------------------------------------------------------------------------------------------
# Tiled MLP
# ------------------------------------------------------------------------------------------
def test_tiled_function_matches_the_mlp_on_ragged_tiles():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.SiLU(), torch.nn.Linear(6, 4)).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    params = list(mlp.parameters())
    assert torch.autograd.gradcheck(lambda x, *p: TiledMLPFunction.apply(mlp, 3, x, *p), (x, *params))
    out = TiledMLPFunction.apply(mlp, 3, x, *params)
    torch.testing.assert_close(out, mlp(x))


@pytest.mark.parametrize("targets, checkpointing, tile", [
    (["q_proj", "k_proj", "v_proj"], True, 5),  # the recipes' LoRA: no trainable MLP weight
    (LORA_EVERYWHERE, True, 2),
    (LORA_EVERYWHERE, True, 16),
    (LORA_EVERYWHERE, False, 7),
])
def test_tiled_mlp_is_exact(targets, checkpointing, tile):
    batch = packed_batch()
    model = lora_model(targets, checkpointing)
    reference = loss_and_grads(model, batch)
    assert tile_mlps(model, tile) == 3
    assert_same(reference, loss_and_grads(model, batch))
    assert tile_mlps(model, None) == 0  # untiled again: the class's own forward
    assert all("forward" not in m.__dict__ for n, m in model.named_modules() if is_mlp(n, m))
    assert_same(reference, loss_and_grads(model, batch), atol=0, rtol=0)


def test_tiled_mlp_replays_autocast_in_the_backward():
    batch = packed_batch(seed=1)
    model = lora_model().to(torch.bfloat16)
    for name, p in model.named_parameters():
        if p.requires_grad:  # fp32 LoRA weights on a bf16 base, as PEFT sets them up for training
            p.data = p.data.float()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    reference = loss_and_grads(model, batch, autocast)
    tile_mlps(model, 7)
    # Same bf16 products tile by tile; only the order of the weight-gradient sums differs.
    assert_same(reference, loss_and_grads(model, batch, torch.autocast("cpu", dtype=torch.bfloat16)),
                atol=2e-3, rtol=2e-2)


def test_short_sequences_skip_the_tiles(monkeypatch):
    model = lora_model()
    tile_mlps(model, 1000)
    calls = []
    monkeypatch.setattr(TiledMLPFunction, "apply", lambda *a: calls.append(a))
    loss_and_grads(model, packed_batch())
    assert calls == []


def test_tiling_wraps_an_instance_forward_and_restores_it():
    model = tiny_model("qwen3")
    mlp = model.model.layers[0].mlp
    patched = mlp.forward.__func__.__get__(mlp)  # an instance-level forward, as liger installs
    mlp.forward = patched
    x = torch.randn(1, 9, 64)
    expected = mlp(x)
    tile_mlps(model, 2)
    torch.testing.assert_close(mlp(x), expected)
    tile_mlps(model, None)
    assert mlp.forward is patched


def test_moe_blocks_are_not_tiled():
    model = tiny_model("qwen3_moe")
    assert tile_mlps(model, 4) == 0


# ------------------------------------------------------------------------------------------
# Recipe section and switches
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"liger_kernel": "yes"}, {"activation_offloading": 1}, {"mlp_tile_tokens": 0}, {"mlp_tile_tokens": 1.5},
    {"expandable_segments": "auto"},
])
def test_memory_args_reject_bad_values(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=f"memory.{field}"):
        MemoryArgs(**bad)


def test_recipe_memory_section():
    raw = {"model": {"name_or_path": "m"}, "data": {"path": "synthetic"}, "training": {"output_dir": "o", **CPU_ARGS}}
    assert build_recipe(raw).memory == MemoryArgs()
    raw["memory"] = {"mlp_tile_tokens": None, "liger_kernel": False}
    assert build_recipe(raw).memory == MemoryArgs(mlp_tile_tokens=None, liger_kernel=False)
    raw["memory"] = {"tile": 3}
    with pytest.raises(ValueError, match="tile"):
        build_recipe(raw)


def test_configure_training_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    training = SFTConfig(output_dir=str(tmp_path), gradient_checkpointing=True, **CPU_ARGS)
    configure_training(MemoryArgs(), training)  # auto: nothing that needs CUDA
    assert not training.use_liger_kernel and not training.activation_offloading
    with pytest.raises(ValueError, match="memory.liger_kernel"):
        configure_training(MemoryArgs(liger_kernel=True), training)
    with pytest.raises(ValueError, match="memory.activation_offloading"):
        configure_training(MemoryArgs(liger_kernel=False, activation_offloading=True), training)


def test_configure_training_auto_with_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("swaa_train.memory.liger_available", lambda: True)
    monkeypatch.setattr("swaa_train.memory.use_expandable_segments", lambda: None)
    training = SFTConfig(output_dir=str(tmp_path), gradient_checkpointing=True, **CPU_ARGS)
    configure_training(MemoryArgs(), training)
    assert training.use_liger_kernel and training.activation_offloading
    training = SFTConfig(output_dir=str(tmp_path), gradient_checkpointing=False, **CPU_ARGS)
    configure_training(MemoryArgs(liger_kernel=False), training)  # no checkpoints: offloading would move everything
    assert not training.use_liger_kernel and not training.activation_offloading


def test_memory_callback_tiles_what_liger_installed_at_train_start():
    batch = packed_batch(seed=2)
    model = lora_model()
    reference = loss_and_grads(model, batch)
    mlps = [m for n, m in model.named_modules() if is_mlp(n, m)]
    callback = MemoryCallback(MemoryArgs(mlp_tile_tokens=4))
    for _ in range(2):  # every Trainer.train patches liger's SwiGLU forward onto each MLP instance, then calls back
        for mlp in mlps:
            mlp.forward = type(mlp).forward.__get__(mlp)
        liger_forwards = [mlp.forward for mlp in mlps]
        callback.on_train_begin(None, None, None, model=model)
        assert all(mlp.__dict__[OWN_FORWARD] is f for mlp, f in zip(mlps, liger_forwards))
        calls = []
        original = TiledMLPFunction.apply
        TiledMLPFunction.apply = lambda *a: calls.append(1) or original(*a)
        try:
            assert_same(reference, loss_and_grads(model, batch))
        finally:
            TiledMLPFunction.apply = original
        assert len(calls) == 2 * len(mlps)  # forward and checkpoint recompute, every layer tiled


def test_apply_memory_on_a_peft_model():
    model = lora_model()
    apply_memory(model, MemoryArgs(mlp_tile_tokens=8))
    assert sum(1 for n, m in model.named_modules() if is_mlp(n, m) and "forward" in m.__dict__) == 3
    apply_memory(model, MemoryArgs(mlp_tile_tokens=None))
    assert not any("forward" in m.__dict__ for n, m in model.named_modules() if is_mlp(n, m))


# ------------------------------------------------------------------------------------------
# On the GPU: offloaded checkpoints and liger's kernels
# ------------------------------------------------------------------------------------------
@pytest.mark.gpu
@cuda
def test_activation_offloading_is_exact():
    from trl.models import get_act_offloading_ctx_manager

    batch = packed_batch(lengths=(300, 90, 410))
    model = lora_model(device="cuda")
    reference = loss_and_grads(model, batch)
    offloaded = loss_and_grads(model, batch, get_act_offloading_ctx_manager(model, min_offload_size=16))
    assert_same(reference, offloaded, atol=0, rtol=0)  # bytes moved to the host and back


@pytest.fixture
def restore_liger_patches():
    """liger patches transformers' Qwen3 module globals; put them back for the tests that follow."""
    from transformers.models.qwen3 import modeling_qwen3

    saved = {k: getattr(modeling_qwen3, k) for k in ("apply_rotary_pos_emb", "Qwen3RMSNorm", "Qwen3MLP")}
    yield
    for k, v in saved.items():
        setattr(modeling_qwen3, k, v)


@pytest.mark.gpu
@cuda
def test_liger_kernels_match_eager(restore_liger_patches):
    pytest.importorskip("liger_kernel")
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    batch = packed_batch(lengths=(300, 90, 410))
    model = lora_model(device="cuda")
    reference = loss_and_grads(model, batch)
    # What TRL's use_liger_kernel does (fused linear cross-entropy off, TRL keeps its LM head)
    _apply_liger_kernel_to_instance(model=model.get_base_model(), cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    assert type(model.get_base_model().model.layers[0].mlp).__name__ == "Qwen3MLP"
    assert model.get_base_model().model.layers[0].mlp._get_name() == "LigerSwiGLUMLP"
    patched = loss_and_grads(model, batch)
    assert_same(reference, patched, atol=1e-5, rtol=1e-4)
    tile_mlps(model, 64)  # tiles wrap liger's SwiGLU forward
    assert_same(patched, loss_and_grads(model, batch), atol=1e-5, rtol=1e-4)
