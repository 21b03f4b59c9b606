"""SWAA attention for any transformers decoder that goes through the attention interface.

`register_swaa_attention()` adds an attention implementation named "swaa" to transformers'
`AttentionInterface`, with FlashAttention's mask function in `AttentionMaskInterface` (it
passes on at most the 2-D padding mask, so no T x T mask is ever built). The attention
function reads the layer index from the module, the SWAA settings from
`model.config.swaa_config`, the document boundaries from the padding-free kwargs
(`cu_seq_lens_q/k` from TRL's collator, else `position_ids`) or the padding mask, and the
per-document FA-decode start from the `swaa_full_from` kwarg, then calls the varlen kernel.
"""

from __future__ import annotations

import contextvars
import functools
import json

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from swaa_attn import full_causal_varlen, swaa_attn_varlen_func

from .swaa_config import SWAAConfig

ATTN_IMPLEMENTATION = "swaa"
# The cache of the generation in progress (set by swaa_train.inference.generate_ids): transformers
# passes no cache to attention functions, and this one needs to know, without reading the device,
# whether a step is still the prompt and each row's prompt length. See SWAACache.
GENERATION_CACHE: contextvars.ContextVar = contextvars.ContextVar("swaa_generation_cache", default=None)

# The batch key (and forward kwarg) that carries each document's FA-decode start, `full_from`.
FULL_FROM_KEY = "swaa_full_from"
IGNORE_INDEX = -100  # labels of unsupervised tokens


def full_from_of_labels(labels: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """`full_from` of each document of a packed training row: its first supervised token's offset.

    The one place the FA-decode start is computed for training (at inference it is each
    row's prompt length). A document without supervised tokens gets its length (no FA decode).

    labels: (total,), IGNORE_INDEX where unsupervised; cu_seqlens: (docs + 1,) int32.
    """
    total, docs = labels.numel(), cu_seqlens.numel() - 1
    lengths = cu_seqlens.diff().long()
    doc_of = torch.repeat_interleave(torch.arange(docs), lengths)
    offset = torch.arange(total) - cu_seqlens[:-1].long()[doc_of]
    # Unsupervised tokens count as lying at the document's end.
    candidate = torch.where(labels != IGNORE_INDEX, offset, lengths[doc_of])
    first = lengths.clone()
    first.scatter_reduce_(0, doc_of, candidate, reduce="amin")
    return first.to(torch.int32)


@functools.lru_cache(maxsize=64)
def _parse_config(frozen: str) -> SWAAConfig:
    return SWAAConfig.from_dict(json.loads(frozen))


def layer_settings(module: torch.nn.Module) -> tuple[int | None, int, bool]:
    """(window, keep_first, FA decode) of the attention layer `module`."""
    layer_idx = getattr(module, "layer_idx", None)
    if layer_idx is None:
        raise ValueError(f"{type(module).__name__} has no layer_idx: SWAA attention cannot tell which layer it is")
    raw = getattr(module.config, "swaa_config", None)
    if raw is None:
        raise ValueError("model.config.swaa_config is not set: load the model with swaa_train.attention.apply_swaa")
    config = _parse_config(json.dumps(raw, sort_keys=True))
    return config.layer_window(layer_idx), config.keep_first, config.layer_fa_decode(layer_idx)


def _boundaries_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """cu_seqlens of the documents of a packed row (each restarts at position 0)."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten().to(torch.int32)
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    cu = torch.cat([starts, starts.new_tensor([flat.numel()])])
    return cu, int(cu.diff().max())


def _cumulative(lengths: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))


def _to_varlen(query, key, value, attention_mask, kwargs):
    """Flatten (B, S, H, D) tensors to the packed layout.

    Returns q, k, v, cu_q, cu_k, max_q, max_k and `scatter_back`, a function that puts the
    packed output back into (B, S_q, H, D).
    """
    batch, q_len, k_len = query.shape[0], query.shape[1], key.shape[1]
    flat = lambda t: t.reshape(-1, *t.shape[2:])  # noqa: E731
    if kwargs.get("cu_seq_lens_q") is not None and batch == 1:
        cu_q = kwargs["cu_seq_lens_q"].to(device=query.device, dtype=torch.int32)
        cu_k = kwargs.get("cu_seq_lens_k", cu_q).to(device=query.device, dtype=torch.int32)
        max_q = int(kwargs.get("max_length_q") or int(cu_q.diff().max()))
        max_k = int(kwargs.get("max_length_k") or int(cu_k.diff().max()))
        unflat = lambda out: out.view(1, q_len, *out.shape[1:])  # noqa: E731
        return flat(query), flat(key), flat(value), cu_q, cu_k, max_q, max_k, unflat
    if attention_mask is not None:  # padded batch: keep the real tokens of each row
        keys_valid = attention_mask[:, -k_len:].bool()
        queries_valid = keys_valid[:, -q_len:]
        len_q, len_k = queries_valid.sum(1, dtype=torch.int32), keys_valid.sum(1, dtype=torch.int32)
        idx_q = queries_valid.flatten().nonzero().flatten()
        idx_k = keys_valid.flatten().nonzero().flatten()

        def scatter_back(out):
            full = out.new_zeros(batch * q_len, *out.shape[1:])
            full[idx_q] = out
            return full.view(batch, q_len, *out.shape[1:])

        return (
            flat(query)[idx_q],
            flat(key)[idx_k],
            flat(value)[idx_k],
            _cumulative(len_q),
            _cumulative(len_k),
            q_len,  # bounds of the longest row: no host read of the lengths
            k_len,
            scatter_back,
        )
    position_ids = kwargs.get("position_ids")
    packed = GENERATION_CACHE.get() is None  # a generation's row is one sequence, never a pack
    if packed and position_ids is not None and batch == 1 and q_len == k_len and q_len > 1:
        cu, max_len = _boundaries_from_position_ids(position_ids)
        unflat = lambda out: out.view(1, q_len, *out.shape[1:])  # noqa: E731
        return flat(query), flat(key), flat(value), cu, cu, max_len, max_len, unflat
    # One sequence per row.
    steps = torch.arange(batch + 1, dtype=torch.int32, device=query.device)
    unflat = lambda out: out.view(batch, q_len, *out.shape[1:])  # noqa: E731
    return flat(query), flat(key), flat(value), steps * q_len, steps * k_len, q_len, k_len, unflat


def _full_from(kwargs, query, key, cu_q, cu_k) -> torch.Tensor | None:
    """Per-sequence start of the FA-decode region in a layer with FA decode.

    From the `swaa_full_from` kwarg (training batches, explicit forwards), else from the cache
    of `swaa_train.inference.generate_ids` (each row's prompt length), else, for a plain
    `model.generate`, every query after the first forward is a generated token.
    """
    full_from = kwargs.get(FULL_FROM_KEY)
    if full_from is not None:
        return full_from.to(device=cu_q.device, dtype=torch.int32).reshape(-1)
    cache = GENERATION_CACHE.get()
    if cache is not None:
        return cache.full_from(cu_q.device)
    if query.shape[2] == key.shape[2]:  # no cached keys: the whole prompt
        return None
    return cu_k.diff() - cu_q.diff()  # each row's cached keys: its queries come after them


def _sdpa_decode(query, key, value, attention_mask, scaling):
    """One query per row that sees every key of its row (the padding aside): plain SDPA over
    the cache, as transformers' own "sdpa" attention runs a decoding step. Returns (B, 1, H, D)."""
    mask = None
    if attention_mask is not None:
        mask = attention_mask[:, -key.shape[2] :].bool()[:, None, None, :]
    key, value = key.to(query.dtype), value.to(query.dtype)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]
    )
    return out.transpose(1, 2)


def _sees_every_cached_key(module, query, key, window, fa_decode) -> bool:
    """A decoding step (one query per row, keys cached) in which that query sees all the keys:
    full layers, FA-decode layers, and sliding layers whose cache keeps only sinks + window."""
    if query.shape[2] != 1 or key.shape[2] == 1:
        return False
    cache = GENERATION_CACHE.get()
    if cache is None:
        return window is None or fa_decode
    return cache.decoding(module.layer_idx)


def _refuse_unsupported(module, kwargs) -> None:
    """Attention arguments the kernel cannot honour are errors, not silently dropped."""
    for name, what in (("softcap", "attention logit soft-capping"), ("s_aux", "learned attention sinks")):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"{type(module).__name__} uses {what} (`{name}`), which SWAA attention does not implement; "
                "this model cannot be adapted with swaa-train"
            )


def swaa_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: (B, H, S, D) inputs, (B, S, H, D) output."""
    if dropout and module.training:
        raise ValueError(f"SWAA attention has no attention dropout; got dropout={dropout}")
    _refuse_unsupported(module, kwargs)
    window, keep_first, fa_decode = layer_settings(module)
    if _sees_every_cached_key(module, query, key, window, fa_decode):
        return _sdpa_decode(query, key, value, attention_mask, scaling), None
    if window is None and _one_causal_block(query, key, attention_mask, kwargs):
        return _sdpa_causal(query, key, value, scaling), None
    # Under autocast the normed q/k of an fp32 model stay fp32 while v comes out of a linear
    # in the autocast dtype; the kernel takes one dtype, that of v.
    query, key = query.to(value.dtype), key.to(value.dtype)
    q, k, v, cu_q, cu_k, max_q, max_k, scatter_back = _to_varlen(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attention_mask, kwargs
    )
    out = swaa_attn_varlen_func(
        q,
        k,
        v,
        cu_q,
        cu_k,
        max_q,
        max_k,
        window=window,
        keep_first=keep_first,
        full_from=_full_from(kwargs, query, key, cu_q, cu_k) if fa_decode and window is not None else None,
        softmax_scale=scaling,
    )
    return scatter_back(out), None


def _one_causal_block(query, key, attention_mask, kwargs) -> bool:
    """Whether a full-attention layer is plain causal attention over whole rows: on CUDA, with
    queries == keys, no padding and at most one document per row. cuDNN (torch SDPA) runs that
    faster than the Triton kernel, which has no window to skip there (BENCHMARKS.md). Decided
    from shapes alone: no host read of the lengths."""
    if not query.is_cuda or query.shape[2] != key.shape[2] or attention_mask is not None:
        return False
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        return query.shape[0] == 1 and cu.numel() == 2
    # A single row with position_ids may be a pack whose documents restart at 0 (see _to_varlen),
    # unless it is the prompt of a generation.
    return query.shape[0] > 1 or kwargs.get("position_ids") is None or GENERATION_CACHE.get() is not None


def _sdpa_causal(query, key, value, scaling):
    """Causal attention of (B, H, S, D) rows through torch SDPA (cuDNN first); returns (B, S, H, D)."""
    packed = lambda t: t.to(query.dtype).transpose(1, 2).flatten(0, 1)  # noqa: E731  (a view for one row)
    rows = torch.arange(query.shape[0] + 1, device=query.device, dtype=torch.int32) * query.shape[2]
    out = full_causal_varlen(packed(query), packed(key), packed(value), rows, scaling)
    return out.view(query.shape[0], query.shape[2], *out.shape[1:])


def register_swaa_attention() -> None:
    """Make attn_implementation="swaa" available to every transformers model (idempotent)."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, swaa_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, flash_attention_mask)


def check_supported(model_or_class) -> None:
    """Refuse models whose layers do not dispatch through the attention interface."""
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    if not getattr(cls, "_supports_attention_backend", False):
        raise ValueError(
            f"{cls.__name__} does not route attention through transformers' AttentionInterface, "
            "so SWAA attention cannot be applied to it"
        )


def apply_swaa(model: PreTrainedModel, swaa: SWAAConfig) -> PreTrainedModel:
    """Switch `model` (in place) to SWAA attention with the settings `swaa`."""
    check_supported(model)
    text_config = model.config.get_text_config()
    swaa.check_num_layers(text_config.num_hidden_layers)
    register_swaa_attention()
    text_config.swaa_config = swaa.to_dict()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model
