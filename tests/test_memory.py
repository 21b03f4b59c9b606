"""Memory techniques: each switch leaves the loss and the LoRA gradients unchanged."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import VOCAB, tiny_model
from peft import LoraConfig, get_peft_model
from trl import SFTConfig
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from swaa_train.attention import IGNORE_INDEX, apply_swaa
from swaa_train.memory import (
    ALLOC_CONF,
    configure_training,
    limit_offloading,
    offload_limit_bytes,
    use_expandable_segments,
)
from swaa_train.recipe import MemoryArgs, build_recipe
from swaa_train.swaa_config import SWAAConfig
from swaa_train.trainer import FullFromCollator

SWAA = SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=True, non_sliding_layers=[1])
LORA_EVERYWHERE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CPU_ARGS = {"bf16": False, "use_cpu": True, "report_to": "none"}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def packed_batch(lengths=(23, 9, 30), answer=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(1, VOCAB, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n - answer) + ids[n - answer :]})
    return FullFromCollator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))(examples)


def lora_model(targets=LORA_EVERYWHERE, checkpointing=True, seed=0, device="cpu"):
    model = apply_swaa(tiny_model("qwen3", seed=seed), SWAA).to(device)
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_rslora=True, init_lora_weights=False)
    )  # B != 0: every LoRA weight gets a gradient
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
# Recipe section and switches
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"liger_kernel": "yes"},
        {"activation_offloading": 1},
        {"offload_limit_gib": -1},
        {"offload_limit_gib": "half"},
        {"offload_limit_gib": True},
        {"expandable_segments": "auto"},
    ],
)
def test_memory_args_reject_bad_values(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=f"memory.{field}"):
        MemoryArgs(**bad)


def test_recipe_memory_section():
    raw = {"model": {"name_or_path": "m"}, "data": {"path": "synthetic"}, "training": {"output_dir": "o", **CPU_ARGS}}
    assert build_recipe(raw).memory == MemoryArgs()
    raw["memory"] = {"activation_offloading": False, "liger_kernel": False}
    assert build_recipe(raw).memory == MemoryArgs(activation_offloading=False, liger_kernel=False)
    raw["memory"] = {"tile": 3}
    with pytest.raises(ValueError, match="tile"):
        build_recipe(raw)


def test_configure_training_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    training = SFTConfig(output_dir=str(tmp_path), gradient_checkpointing=True, **CPU_ARGS)
    configured = configure_training(MemoryArgs(), training)  # auto: nothing that needs CUDA
    assert not configured.use_liger_kernel and not configured.activation_offloading
    with pytest.raises(ValueError, match="memory.liger_kernel"):
        configure_training(MemoryArgs(liger_kernel=True), training)
    with pytest.raises(ValueError, match="memory.activation_offloading"):
        configure_training(MemoryArgs(liger_kernel=False, activation_offloading=True), training)


def test_configure_training_auto_with_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("swaa_train.memory.liger_available", lambda: True)
    monkeypatch.setattr("swaa_train.memory.use_expandable_segments", lambda: None)
    training = SFTConfig(output_dir=str(tmp_path), gradient_checkpointing=True, **CPU_ARGS)
    configured = configure_training(MemoryArgs(), training)
    assert configured.use_liger_kernel and configured.activation_offloading
    # The caller's config is copied, never changed.
    assert not training.use_liger_kernel and not training.activation_offloading
    assert configured.output_dir == training.output_dir and configured.gradient_checkpointing
    training = SFTConfig(output_dir=str(tmp_path), gradient_checkpointing=False, **CPU_ARGS)
    configured = configure_training(
        MemoryArgs(liger_kernel=False), training
    )  # no checkpoints: offloading would move everything
    assert not configured.use_liger_kernel and not configured.activation_offloading


def test_expandable_segments_through_the_allocator_variable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.delenv(ALLOC_CONF, raising=False)
    assert use_expandable_segments()
    assert torch.cuda.is_available() and os.environ[ALLOC_CONF] == "expandable_segments:True"
    monkeypatch.setenv(ALLOC_CONF, "max_split_size_mb:128")
    assert use_expandable_segments()
    assert os.environ[ALLOC_CONF] == "max_split_size_mb:128,expandable_segments:True"
    monkeypatch.setenv(ALLOC_CONF, "expandable_segments:False")  # the user's own choice is kept
    assert not use_expandable_segments()
    assert os.environ[ALLOC_CONF] == "expandable_segments:False"
    monkeypatch.delenv(ALLOC_CONF)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # too late: the allocator has started
    assert not use_expandable_segments() and ALLOC_CONF not in os.environ


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


class Trainer:
    """What limit_offloading reads of a trainer: TRL's offloading context."""

    def __init__(self, context):
        self.maybe_activation_offload_context = context


def test_offload_limit_keeps_later_activations_on_the_device():
    from trl.models.activation_offloading import OffloadActivations

    # TRL's OffloadActivations needs an accelerator to be built; this one has its pack-hook
    # contract: a new forward resets is_first_forward_call, tensors under min_tensor_size_bytes stay.
    context = OffloadActivations.__new__(OffloadActivations)
    context.min_tensor_size_bytes, context.tracker, context.is_first_forward_call = 16, {}, True

    def pack(tensor):
        context.is_first_forward_call = False
        tensor_id = len(context.tracker) + 1
        context.tracker[tensor_id] = (tensor, tensor.nbytes >= context.min_tensor_size_bytes)
        return tensor_id

    context.pack_hook = pack
    assert limit_offloading(Trainer(context), limit_bytes=1000)

    def forward(sizes):
        context.tracker.clear()
        ids = [context.pack_hook(torch.zeros(n // 4)) for n in sizes]
        return [context.tracker[i][1] for i in ids]

    # 400 + 400 fit, the third 400 would pass 1000, a later 100 still fits, 8 bytes never move.
    assert forward([400, 400, 400, 100, 8]) == [True, True, False, True, False]
    assert forward([400, 400, 400]) == [False, False, False]  # the same forward: its 900 bytes are counted
    context.is_first_forward_call = True  # the backward unpacked everything: a new step
    assert forward([400, 400, 400]) == [True, True, False]
    assert not limit_offloading(Trainer(None), limit_bytes=1000)


def test_offload_limit_auto_is_half_the_host_shared_by_the_node(monkeypatch):
    import psutil

    total = psutil.virtual_memory().total
    assert offload_limit_bytes(MemoryArgs()) == total // 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert offload_limit_bytes(MemoryArgs()) == total // 2 // 4
    assert offload_limit_bytes(MemoryArgs(offload_limit_gib=1.5)) == 3 * 2**29


@pytest.mark.gpu
@cuda
def test_offloading_within_a_limit_is_exact_and_keeps_to_it():
    from trl.models import get_act_offloading_ctx_manager

    batch = packed_batch(lengths=(300, 90, 410))
    model = lora_model(device="cuda")
    reference = loss_and_grads(model, batch)
    context = get_act_offloading_ctx_manager(model, min_offload_size=16)
    layer_input = batch["input_ids"].numel() * model.config.hidden_size * 4  # float32, one packed row
    limit = int(1.5 * layer_input)
    assert limit_offloading(Trainer(context), limit_bytes=limit)
    offloaded = []
    pack = context.pack_hook

    def recording_pack(tensor):
        tensor_id = pack(tensor)
        if context.tracker[tensor_id][1]:
            offloaded.append(tensor.nbytes)
        return tensor_id

    context.pack_hook = recording_pack
    assert_same(reference, loss_and_grads(model, batch, context), atol=0, rtol=0)
    # The first layer's input went to the host; the other layers' stayed on the GPU.
    assert 0 < sum(offloaded) <= limit and offloaded.count(layer_input) == 1


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
    _apply_liger_kernel_to_instance(model=model.get_base_model(), cross_entropy=False, fused_linear_cross_entropy=False)
    assert type(model.get_base_model().model.layers[0].mlp).__name__ == "Qwen3MLP"
    assert model.get_base_model().model.layers[0].mlp._get_name() == "LigerSwiGLUMLP"
    patched = loss_and_grads(model, batch)
    assert_same(reference, patched, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("wanted", [True, False])
def test_recipe_asks_for_expandable_segments_before_building_the_training_config(monkeypatch, tmp_path, wanted):
    import trl

    order = []

    class RecordedConfig(trl.SFTConfig):
        def __post_init__(self):
            order.append("SFTConfig")
            super().__post_init__()

    monkeypatch.setattr(trl, "SFTConfig", RecordedConfig)
    monkeypatch.setattr("swaa_train.memory.use_expandable_segments", lambda: order.append("expandable"))
    raw = {
        "model": {"name_or_path": "m"},
        "data": {"path": "synthetic"},
        "training": {"output_dir": str(tmp_path), **CPU_ARGS},
        "memory": {"expandable_segments": wanted},
    }
    build_recipe(raw)
    assert order == (["expandable", "SFTConfig"] if wanted else ["SFTConfig"])
