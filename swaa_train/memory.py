"""Memory techniques for long sequences, switched from the recipe's `memory` section.

With gradient checkpointing and TRL's fused LM head, what is left to fit at 100k+ tokens is
(a) every layer's checkpointed input and (b) the float32 temporaries of the eager RMSNorm,
SwiGLU and RoPE of the layer being recomputed. Against each, TRL's own switches:

- (a) `activation_offloading`: what the forward saves outside the checkpointed layers (each
  layer's input) goes to pinned CPU memory on a side stream and comes back in the backward,
  up to `offload_limit_gib` per step (`limit_offloading`): at 512k tokens the Qwen3-4B shape's
  checkpoints are 90 GiB, more pinned memory than a 125-GiB host can give, so the first layers'
  inputs (needed last) go to the host and the last layers' stay on the GPU;
- (b) `use_liger_kernel`: Liger's fused RMSNorm, SwiGLU and RoPE kernels (liger's fused linear
  cross-entropy stays off: TRL's fused LM head already scores only supervised tokens);
- PyTorch's expandable-segments allocator (PYTORCH_CUDA_ALLOC_CONF), against fragmentation:
  asked for by `recipe.build_recipe`, before TRL's SFTConfig can start CUDA.

Each changes where tensors live or in which order the same arithmetic runs, never the result.
`configure_training` resolves the switches into a copy of the caller's `SFTConfig`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os

import torch
from transformers.utils import logging

from .recipe import MemoryArgs

logger = logging.get_logger(__name__)

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"


def liger_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def _resolve(value: bool | str, name: str, possible: bool, why_not: str) -> bool:
    if value is True and not possible:
        raise ValueError(f"memory.{name}=true, but {why_not}")
    return value is True or (value == "auto" and possible)


def use_expandable_segments() -> bool:
    """Ask PyTorch's CUDA allocator for expandable segments through PYTORCH_CUDA_ALLOC_CONF.

    The allocator reads the variable when CUDA starts, so this only takes effect before the
    first CUDA allocation; a setting the user made in the variable is kept. Returns whether
    expandable segments are asked for.
    """
    current = os.environ.get(ALLOC_CONF, "")
    if "expandable_segments" in current:
        return "expandable_segments:True" in current
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        logger.warning("CUDA is already initialised: set %s=expandable_segments:True before starting", ALLOC_CONF)
        return False
    os.environ[ALLOC_CONF] = ",".join(filter(None, [current, "expandable_segments:True"]))
    return True


def configure_training(memory: MemoryArgs, training):
    """A copy of `training` (TRL's SFTConfig) with the `memory` switches turned into TRL's own fields."""
    use_liger = _resolve(
        memory.liger_kernel,
        "liger_kernel",
        liger_available(),
        "Liger kernels need CUDA and `pip install liger-kernel` (the `liger` extra)",
    )
    offload = _resolve(
        memory.activation_offloading,
        "activation_offloading",
        torch.cuda.is_available() and bool(training.gradient_checkpointing),
        "activation offloading needs CUDA and gradient checkpointing",
    )
    changes = {}
    if use_liger:
        changes["use_liger_kernel"] = True
    if offload:
        changes["activation_offloading"] = True
    if changes:
        training = dataclasses.replace(training, **changes)
    logger.info(
        "Memory: liger kernels %s, activation offloading %s",
        "on" if training.use_liger_kernel else "off",
        "on" if training.activation_offloading else "off",
    )
    return training


def offload_limit_bytes(memory: MemoryArgs) -> int:
    """Bytes of saved activations one process may offload per step: `memory.offload_limit_gib`,
    or (auto) half the host's memory shared by the node's processes (LOCAL_WORLD_SIZE)."""
    if memory.offload_limit_gib != "auto":
        return int(float(memory.offload_limit_gib) * 2**30)
    import psutil

    return psutil.virtual_memory().total // 2 // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def limit_offloading(trainer, limit_bytes: int) -> bool:
    """Make TRL's activation offloading (trainer.maybe_activation_offload_context) stop offloading
    once `limit_bytes` of the current step's activations are on the host: later ones stay on the
    GPU. Returns whether the trainer offloads at all (and so got the limit)."""
    from trl.models.activation_offloading import OffloadActivations

    context = getattr(trainer, "maybe_activation_offload_context", None)
    if not isinstance(context, OffloadActivations):
        return False
    pack, smallest = context.pack_hook, context.min_tensor_size_bytes
    offloaded = [0]

    def pack_within_limit(activation: torch.Tensor):
        if context.is_first_forward_call:  # a new forward: nothing of it offloaded yet
            offloaded[0] = 0
        size = activation.element_size() * activation.nelement()
        # TRL's pack keeps tensors under min_tensor_size_bytes on the device: past the limit, all of them.
        context.min_tensor_size_bytes = smallest if offloaded[0] + size <= limit_bytes else math.inf
        tensor_id = pack(activation)
        if context.tracker[tensor_id][1]:  # (tensor, offloaded, ...)
            offloaded[0] += size
        return tensor_id

    context.pack_hook = pack_within_limit
    logger.info("Activation offloading: at most %.1f GiB per step in host memory", limit_bytes / 2**30)
    return True
