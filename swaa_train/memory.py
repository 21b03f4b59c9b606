"""Memory techniques for long sequences, switched from the recipe's `memory` section.

With gradient checkpointing and TRL's fused LM head, what is left to fit at 100k+ tokens is
(a) every layer's checkpointed input, (b) the one layer being recomputed in the backward,
whose largest tensors are the MLP intermediates (gate, up: 2 x intermediate_size per token),
and (c) the float32 temporaries of the eager RMSNorm and RoPE. Against each:

- (a) TRL's `activation_offloading`: what the forward saves outside the checkpointed layers
  (each layer's input) goes to pinned CPU memory on a side stream and comes back in the backward;
- (b) a sequence-tiled MLP (`TiledMLPFunction`): the MLP runs over tiles of `mlp_tile_tokens`
  tokens and each tile is recomputed in the backward, so its intermediates never exist for the
  whole sequence (DeepSpeed's TiledMLP; liger-kernel ships one too, but liger is optional here).
  Off by default: the extra MLP forward costs about 9% of a step (BENCHMARKS.md), so it is for
  pushing T past what fits without it;
- (c) Liger's fused RMSNorm, SwiGLU and RoPE kernels through TRL's `use_liger_kernel` (liger's
  fused linear cross-entropy stays off: TRL's fused LM head already scores only supervised tokens);
- PyTorch's expandable-segments allocator, against fragmentation.

Each changes where tensors live or in which order the same arithmetic runs, never the result.
`configure_training` resolves the switches into TRL's own fields before the trainer is built;
`MemoryCallback` adapts the model when training starts (`apply_memory`), after liger's patches.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from .config import MemoryArgs

logger = logging.get_logger(__name__)


def liger_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def _resolve(value: bool | str, name: str, possible: bool, why_not: str) -> bool:
    if value is True and not possible:
        raise ValueError(f"memory.{name}=true, but {why_not}")
    return value is True or (value == "auto" and possible)


def use_expandable_segments() -> None:
    """Grow CUDA memory segments in place instead of caching fixed ones (as PYTORCH_CUDA_ALLOC_CONF would)."""
    if torch.cuda.is_available():
        setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)  # torch >= 2.9; older: the cuda one
        (setter or torch.cuda.memory._set_allocator_settings)("expandable_segments:True")


def configure_training(memory: MemoryArgs, training) -> None:
    """Turn the `memory` switches into TRL's own (`use_liger_kernel`, `activation_offloading`); call before the trainer."""
    if _resolve(memory.liger_kernel, "liger_kernel", liger_available(),
                "Liger kernels need CUDA and `pip install liger-kernel` (the `liger` extra)"):
        training.use_liger_kernel = True
    checkpointing = bool(training.gradient_checkpointing)
    if _resolve(memory.activation_offloading, "activation_offloading", torch.cuda.is_available() and checkpointing,
                "activation offloading needs CUDA and gradient checkpointing"):
        training.activation_offloading = True
    if memory.expandable_segments:
        use_expandable_segments()
    logger.info(
        "Memory: liger kernels %s, activation offloading %s, MLP tiles of %s tokens",
        "on" if training.use_liger_kernel else "off", "on" if training.activation_offloading else "off",
        memory.mlp_tile_tokens or "(off)",
    )


# ------------------------------------------------------------------------------------------
# Tiled MLP
# ------------------------------------------------------------------------------------------
def _autocast_state(device_type: str) -> dict:
    return dict(device_type=device_type, enabled=torch.is_autocast_enabled(device_type),
                dtype=torch.get_autocast_dtype(device_type), cache_enabled=torch.is_autocast_cache_enabled())


class TiledMLPFunction(torch.autograd.Function):
    """y = mlp(x), token tile by token tile; saves only x and recomputes each tile in the backward.

    The MLP's trainable parameters come in as inputs, so their gradients leave through this
    function (summed over tiles) instead of landing in `.grad` behind autograd's back. The
    backward recomputes under the forward's autocast state, as torch.utils.checkpoint does.
    """

    @staticmethod
    def forward(ctx, mlp_forward, tile_tokens: int, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.mlp_forward, ctx.tile_tokens = mlp_forward, tile_tokens
        ctx.autocast = _autocast_state(x.device.type)
        ctx.save_for_backward(x, *params)
        flat = x.reshape(-1, x.shape[-1])
        out = None
        for start in range(0, flat.shape[0], tile_tokens):
            y = mlp_forward(flat[start:start + tile_tokens])
            if out is None:
                out = y.new_empty(flat.shape[0], y.shape[-1])
            out[start:start + y.shape[0]] = y
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, *params = ctx.saved_tensors
        x_needs_grad = ctx.needs_input_grad[2]
        wanted = [p for p, needed in zip(params, ctx.needs_input_grad[3:]) if needed]
        flat, grad_flat = x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = torch.empty_like(flat) if x_needs_grad else None
        grad_params = [torch.zeros_like(p) for p in wanted]
        for start in range(0, flat.shape[0], ctx.tile_tokens):
            tile = flat[start:start + ctx.tile_tokens].detach().requires_grad_(x_needs_grad)
            with torch.enable_grad(), torch.autocast(**ctx.autocast):
                y = ctx.mlp_forward(tile)
            inputs = ([tile] if x_needs_grad else []) + wanted
            grads = list(torch.autograd.grad(y, inputs, grad_flat[start:start + tile.shape[0]], allow_unused=True))
            if x_needs_grad:
                grad_x[start:start + tile.shape[0]] = grads.pop(0)
            for acc, g in zip(grad_params, grads):
                if g is not None:
                    acc += g
        per_param = iter(grad_params)
        grad_params = [next(per_param) if needed else None for needed in ctx.needs_input_grad[3:]]
        return None, None, (grad_x.view_as(x) if x_needs_grad else None), *grad_params


TILE_TOKENS = "_swaa_mlp_tile_tokens"
OWN_FORWARD = "_swaa_untiled_instance_forward"


def _untiled_forward(module: torch.nn.Module):
    """The forward tiling wrapped: an instance-level one (liger's SwiGLU) if there was one, else the class's."""
    own = module.__dict__.get(OWN_FORWARD)
    return own if own is not None else type(module).forward.__get__(module)


def _tiled_forward(module: torch.nn.Module, x: torch.Tensor, *args, **kwargs):
    untiled, tile_tokens = _untiled_forward(module), module.__dict__[TILE_TOKENS]
    if args or kwargs or x.numel() // x.shape[-1] <= tile_tokens:
        return untiled(x, *args, **kwargs)
    params = [p for p in module.parameters() if p.requires_grad]
    return TiledMLPFunction.apply(untiled, tile_tokens, x, *params)


def is_mlp(name: str, module: torch.nn.Module) -> bool:
    """A decoder layer's dense MLP (Qwen3MLP, LlamaMLP, ...): token-wise, so tiling it is exact. MoE blocks are not."""
    return name.rsplit(".", 1)[-1] == "mlp" and type(module).__name__.endswith("MLP")


def tile_mlps(model: torch.nn.Module, tile_tokens: int | None) -> int:
    """Run every dense MLP of `model` in tiles of `tile_tokens` tokens (None: untiled again). Returns how many.

    Idempotent, and safe to repeat after something re-patched the MLP's forward (liger does so at
    every `Trainer.train`): the forward found then is the one the tiles wrap.
    """
    count = 0
    for name, module in model.named_modules():
        if not is_mlp(name, module):
            continue
        current = module.__dict__.get("forward")
        ours = isinstance(current, functools.partial) and current.func is _tiled_forward
        if tile_tokens is None:
            if TILE_TOKENS in module.__dict__:
                del module.__dict__[TILE_TOKENS]
                own = module.__dict__.pop(OWN_FORWARD)
                if ours and own is None:
                    del module.forward  # back to the class's own forward
                elif ours:
                    module.forward = own
            continue
        if not ours:
            module.__dict__[OWN_FORWARD] = current  # None: the class's forward
            module.forward = functools.partial(_tiled_forward, module)
        module.__dict__[TILE_TOKENS] = tile_tokens
        count += 1
    return count


def apply_memory(model: torch.nn.Module, memory: MemoryArgs) -> torch.nn.Module:
    """The model-level techniques of `memory` (the tiled MLP), on `model` as it is now."""
    tiled = tile_mlps(model, memory.mlp_tile_tokens)
    if memory.mlp_tile_tokens is not None:
        logger.info("Tiled MLP: %d MLPs run in tiles of %d tokens beyond that length", tiled, memory.mlp_tile_tokens)
    return model


class MemoryCallback(TrainerCallback):
    """Applies the model-level techniques when training starts.

    transformers patches liger's kernels into the model at the start of `Trainer.train` (liger's
    SwiGLU replaces each MLP's forward); the tiles must wrap that forward, so they go in after it.
    """

    def __init__(self, memory: MemoryArgs):
        self.memory = memory

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        apply_memory(model, self.memory)
