"""vLLM attention backends that apply the SWAA mask over vLLM's paged KV cache.

Registered by `swaa_train.vllm_plugin.register()`; imported by vLLM when it builds a model.
Each class checks once whether the served folder has SWAA settings; without them every method
is vLLM's own. With them, a layer's queries of one step see, per request, the keys the mask of
DESIGN.md shows them, `full_from` being the request's prompt length:

- the metadata builder turns the engine's request state into `full_from` per request;
- the attention writes keys and values into the paged cache in a layout of its own, gathers
  each request's keys through its block table and runs `swaa_attn.swaa_attn_varlen_func` with
  the step's queries bottom-right aligned to them (chunked prefill and prefix caching are then
  exact: a chunk's queries see the cached keys of earlier chunks and of shared prefixes).
"""

from __future__ import annotations

import dataclasses

import torch
from vllm.config import get_current_vllm_config
from vllm.logger import init_logger
from vllm.model_executor.models.utils import extract_layer_index
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadata,
    CPUAttentionMetadataBuilder,
)
from vllm.v1.attention.backends.triton_attn import (
    TritonAttentionBackend,
    TritonAttentionImpl,
    TritonAttentionMetadataBuilder,
)

from .swaa_config import SWAAConfig
from .vllm_plugin import full_from_of_step, paged_swaa_attention, swaa_of_model_config, write_paged

# A child of vLLM's logger, so that its messages show with vLLM's own.
logger = init_logger(f"vllm.{__name__}")


# ------------------------------------------------------------------------------------------
# CPU: an override of vLLM's CPU_ATTN
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SWAACPUAttentionMetadata(CPUAttentionMetadata):
    full_from: torch.Tensor | None = None  # (requests,) int32, see full_from_of_step


class SWAACPUAttentionMetadataBuilder(CPUAttentionMetadataBuilder):
    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.swaa = swaa_of_model_config(vllm_config.model_config)

    def build(self, common_prefix_len, common_attn_metadata, fast_build: bool = False):
        metadata = super().build(common_prefix_len, common_attn_metadata, fast_build)
        if self.swaa is None:
            return metadata
        fields = {f.name: getattr(metadata, f.name) for f in dataclasses.fields(metadata)}
        return SWAACPUAttentionMetadata(**fields, full_from=full_from_of_step(common_attn_metadata))


def refuse_unsupported(impl) -> None:
    """SWAA replaces the layer's attention: refuse what it would silently drop."""
    if impl.attn_type != AttentionType.DECODER:
        raise NotImplementedError(f"SWAA attention: only decoder self-attention, got {impl.attn_type}")
    if impl.alibi_slopes is not None or impl.sinks is not None or impl.logits_soft_cap:
        raise NotImplementedError("SWAA attention: ALiBi, learned sinks and logit soft-capping are not supported")
    if impl.sliding_window not in (None, -1, (-1, -1)):
        raise NotImplementedError("SWAA attention: the model has its own sliding window; swaa_config.json sets it")
    if impl.kv_cache_dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise NotImplementedError(f"SWAA attention: KV cache dtype {impl.kv_cache_dtype} is not supported")


def swaa_forward(impl, layer, query, kv_cache, attn_metadata, output, output_scale, output_block_scale):
    """The SWAA path of an impl's forward (impl.swaa set): one step over the paged cache."""
    if output_scale is not None or output_block_scale is not None:
        raise NotImplementedError("SWAA attention: fused output quantization is not supported")
    if attn_metadata is None:  # warm-up
        return output
    if impl.layer_idx is None:
        impl.layer_idx = extract_layer_index(layer.layer_name)
    window = impl.swaa.layer_window(impl.layer_idx)
    fa_decode = window is not None and impl.swaa.layer_fa_decode(impl.layer_idx)
    # The step's real tokens (num_actual_tokens may count padding for a compiled graph's size).
    tokens = int(attn_metadata.query_start_loc[-1])
    output[:tokens] = paged_swaa_attention(
        query[:tokens],
        kv_cache,
        attn_metadata,
        window=window,
        keep_first=impl.swaa.keep_first,
        full_from=attn_metadata.full_from if fa_decode else None,
        scale=impl.scale,
    ).reshape(output[:tokens].shape)
    return output


class SWAAForwardMixin:
    """The forward of both SWAA impls: vLLM's own for folders without SWAA settings."""

    def forward(
        self,
        layer,
        query,
        key,
        value,
        kv_cache,
        attn_metadata,
        output,
        output_scale=None,
        output_block_scale=None,
    ):
        if self.swaa is None:
            return super().forward(
                layer, query, key, value, kv_cache, attn_metadata, output, output_scale, output_block_scale
            )
        return swaa_forward(self, layer, query, kv_cache, attn_metadata, output, output_scale, output_block_scale)


class SWAACPUAttentionImpl(SWAAForwardMixin, CPUAttentionBackendImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.swaa: SWAAConfig | None = swaa_of_model_config(get_current_vllm_config().model_config)
        self.layer_idx: int | None = None  # read from the layer's name on the first forward
        if self.swaa is not None:
            refuse_unsupported(self)
            logger.info_once(
                "SWAA attention backend (CPU; reference attention over the paged KV cache): %s",
                self.swaa.describe(),
            )

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        if self.swaa is None:
            return super().do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)
        write_paged(kv_cache, key, value, slot_mapping)


class SWAACPUAttentionBackend(CPUAttentionBackend):
    """vLLM's CPU_ATTN, with the SWAA mask when the served folder has SWAA settings."""

    @staticmethod
    def get_impl_cls() -> type[SWAACPUAttentionImpl]:
        return SWAACPUAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[SWAACPUAttentionMetadataBuilder]:
        return SWAACPUAttentionMetadataBuilder


# ------------------------------------------------------------------------------------------
# CUDA (experimental): a CUSTOM backend on vLLM's Triton backend and this package's kernel
# ------------------------------------------------------------------------------------------
# vLLM's Triton backend keeps the cache in the layout write_paged / read_paged use (a token's
# key, then its value, along the last dim of (blocks, kv heads, block size, 2 * head dim)), so
# its own cache writes stay. Selected with `--attention-backend CUSTOM`. Not yet run inside vLLM
# on a GPU: it says so when it loads. Its gather syncs with the host, so its builder declares
# no CUDA-graph support.
class SWAACudaAttentionMetadataBuilder(TritonAttentionMetadataBuilder):
    _cudagraph_support = AttentionCGSupport.NEVER

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.swaa = swaa_of_model_config(vllm_config.model_config)

    def build(self, common_prefix_len, common_attn_metadata, fast_build: bool = False):
        metadata = super().build(common_prefix_len, common_attn_metadata, fast_build)
        metadata.full_from = full_from_of_step(common_attn_metadata) if self.swaa is not None else None
        return metadata


class SWAACudaAttentionImpl(SWAAForwardMixin, TritonAttentionImpl):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.swaa: SWAAConfig | None = swaa_of_model_config(get_current_vllm_config().model_config)
        self.layer_idx: int | None = None
        if self.swaa is not None:
            refuse_unsupported(self)
            logger.warning_once(
                "SWAA attention backend (CUDA, experimental: not yet measured inside vLLM; "
                "gathers the paged KV cache, then runs the swaa_attn Triton kernel): %s",
                self.swaa.describe(),
            )


class SWAACudaAttentionBackend(TritonAttentionBackend):
    """vLLM's Triton backend as `CUSTOM`, with the SWAA mask when the served folder has SWAA settings."""

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[SWAACudaAttentionImpl]:
        return SWAACudaAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[SWAACudaAttentionMetadataBuilder]:
        return SWAACudaAttentionMetadataBuilder
