"""Run an SWAA model: load it (base + adapter + swaa_config.json, or a merged directory) and
generate through transformers' `generate` with the "swaa" attention.

What each layer sees while generating (the mask of DESIGN.md, with `full_from` = prompt length):
- the prompt is prefilled under window + sinks in sliding layers, full in non-sliding ones;
- decoding steps attend to all keys in layers with FA decode, to window + sinks without it.

A sliding layer without FA decode never looks past its sinks and its window, so its KV cache
(`SinkWindowLayer`) keeps only those keys; every other layer keeps a full `DynamicLayer`.
`SWAACache.memory_report()` says how much that saves.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.generation import utils as generation_utils
from transformers.utils import logging

from .attention import ATTN_IMPLEMENTATION, GENERATION_CACHE, apply_swaa, register_swaa_attention
from .model import DTYPES
from .swaa_config import SWAAConfig, find_swaa_config, has_tokenizer, is_adapter_dir, resolve_base_model

logger = logging.get_logger(__name__)

# The generate() keyword of a user-made cache: `cache` from transformers 5.2x on, `past_key_values` before.
CACHE_KWARG = "cache" if "cache" in getattr(generation_utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


# ------------------------------------------------------------------------------------------
# KV cache
# ------------------------------------------------------------------------------------------
class RowPadding:
    """`pad_lengths` (each row's left padding) follows the rows when generate() repeats or selects them."""

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.pad_lengths is not None:
            self.pad_lengths = self.pad_lengths.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.pad_lengths is not None:
            self.pad_lengths = self.pad_lengths[indices.to(self.pad_lengths.device)]


class SinkWindowLayer(RowPadding, DynamicSlidingWindowLayer):
    """KV cache of a pure-SWA layer: per row, its first `keep_first` keys and its last `window - 1`.

    Prompts are left-padded, so a row's sinks sit after its padding. The kept keys are laid
    out so that the attention function's view of them stays right: a row that has fewer real
    tokens than the cache holds keeps a plain suffix of the padded sequence (its padding is
    masked by the last columns of the 2-D padding mask, as usual); a longer row keeps
    [sinks, last window - 1 keys], all real, so the mask's last columns are all ones for it.
    Read as a contiguous sequence, the kept keys then give every query exactly the keys the
    SWAA mask shows it (the dropped ones lie at distance >= window from every later query).
    """

    def __init__(self, sliding_window: int, keep_first: int = 0, pad_lengths: torch.Tensor | None = None):
        super().__init__(sliding_window=sliding_window)
        self.keep_first = keep_first
        self.capacity = keep_first + sliding_window - 1  # keys kept between steps
        self.pad_lengths = pad_lengths  # (batch,) left padding per row; None: no padding
        self._max_pad: int | None = None  # host copy of pad_lengths.max(), read once per prompt

    @property
    def pad_lengths(self) -> torch.Tensor | None:
        return self._pad_lengths

    @pad_lengths.setter
    def pad_lengths(self, value: torch.Tensor | None) -> None:
        self._pad_lengths, self._max_pad = value, None

    def _every_row_full(self) -> bool:
        """Whether every row has more real tokens than the cache keeps ([sinks, window] layout)."""
        if self._max_pad is None:
            self._max_pad = int(self.pad_lengths.max()) if self.pad_lengths is not None else 0
        return self.cumulative_length - self._max_pad >= self.capacity

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[-2] == 1 and self.keys.shape[-2] == self.capacity and self._every_row_full():
            # A decoding step past the window: the oldest window key leaves, the sinks stay.
            self.cumulative_length += 1
            keys = torch.cat([self.keys, key_states], dim=-2)
            values = torch.cat([self.values, value_states], dim=-2)
            kf = self.keep_first
            self.keys = torch.cat([keys[..., :kf, :], keys[..., kf + 1 :, :]], dim=-2)
            self.values = torch.cat([values[..., :kf, :], values[..., kf + 1 :, :]], dim=-2)
            return keys, values
        self.cumulative_length += key_states.shape[-2]
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        if keys.shape[-2] > self.capacity:
            index = self._kept_index(keys.shape[0], keys.shape[-2], keys.device)
            index = index[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[-1])
            self.keys, self.values = keys.gather(2, index), values.gather(2, index)
        else:
            self.keys, self.values = keys, values
        return keys, values  # this step's queries need every key of the step

    def _kept_index(self, batch: int, length: int, device) -> torch.Tensor:
        """(batch, capacity) indices into the `length` keys of this step that stay cached."""
        pad = self.pad_lengths if self.pad_lengths is not None else torch.zeros(batch, dtype=torch.long)
        real = self.cumulative_length - pad.to(device=device, dtype=torch.long)  # real tokens of each row so far
        suffix = torch.arange(length - self.capacity, length, device=device).expand(batch, -1)
        # Where a row's real tokens start among the keys (0 once its sinks sit in front).
        sink_start = (length - real).clamp(min=0)
        sinks = sink_start[:, None] + torch.arange(self.keep_first, device=device)
        window = torch.arange(length - self.sliding_window + 1, length, device=device).expand(batch, -1)
        trimmed = torch.cat([sinks, window], dim=1)
        return torch.where((real > self.capacity)[:, None], trimmed, suffix)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # The padding mask must cover the whole sequence: the attention function takes its last columns.
        return self.cumulative_length + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError("SinkWindowLayer cannot be cropped (assisted decoding is not supported with SWAA caches)")


def _layer_bytes(layer) -> tuple[int, int]:
    """(bytes held, bytes a full cache would hold) for one cache layer."""
    if not getattr(layer, "is_initialized", False) or layer.keys is None or layer.keys.numel() == 0:
        return 0, 0
    held = layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    if not isinstance(layer, SinkWindowLayer):
        return held, held
    per_position = held // layer.keys.shape[-2]
    return held, per_position * layer.cumulative_length


class SWAACache(RowPadding, DynamicCache):
    """The KV cache of a SWAA generation.

    One cache layer per model layer: `SinkWindowLayer` where the layer never attends past
    window + sinks (sliding, FA decode off), a full `DynamicLayer` elsewhere. The cache also
    knows the prompt: its (left-padded) length and each row's padding, so every prompt token is
    computed under window + sinks however the prompt arrives (one forward, chunks, or a cache
    reused from an earlier call) and only tokens after it get FA decode. All of this is host
    bookkeeping: the attention function reads it without a device sync.
    """

    def __init__(self, swaa: SWAAConfig, num_layers: int, pad_lengths: torch.Tensor | None = None):
        layers = []
        for i in range(num_layers):
            window = swaa.layer_window(i)
            if window is not None and not swaa.layer_fa_decode(i):
                layers.append(SinkWindowLayer(window, swaa.keep_first, pad_lengths))
            else:
                layers.append(DynamicLayer())
        Cache.__init__(self, layers=layers)
        self.pad_lengths = pad_lengths  # (rows,) left padding of each prompt row
        self.prompt_length: int | None = None  # padded length of the prompt; None: not generating
        self.seen_before = [0] * num_layers  # tokens each layer held before its current step

    def set_prompt(self, attention_mask: torch.Tensor) -> None:
        """The prompt of the next generation: the whole (left-padded) input, cached part included."""
        self.prompt_length = attention_mask.shape[1]
        self._set_pad_lengths(left_pad_lengths(attention_mask))

    def _set_pad_lengths(self, pad: torch.Tensor) -> None:
        self.pad_lengths = pad
        for layer in self.layers:
            if isinstance(layer, SinkWindowLayer):
                layer.pad_lengths = pad

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        rows = key_states.shape[0]
        if self.pad_lengths is not None and self.pad_lengths.shape[0] != rows:
            # generate() repeated every prompt (beams, num_return_sequences) before the first step.
            self._set_pad_lengths(self.pad_lengths.repeat_interleave(rows // self.pad_lengths.shape[0]))
        self.seen_before[layer_idx] = self.layers[layer_idx].get_seq_length()
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def decoding(self, layer_idx: int) -> bool:
        """Whether the step `layer_idx` is computing lies wholly after the prompt."""
        return self.prompt_length is not None and self.seen_before[layer_idx] >= self.prompt_length

    def full_from(self, device) -> torch.Tensor:
        """Each row's FA-decode start among its real tokens: its prompt length."""
        pad = self.pad_lengths if self.pad_lengths is not None else torch.zeros(1, dtype=torch.long)
        return (self.prompt_length - pad).to(device=device, dtype=torch.int32)

    def memory_report(self) -> dict:
        held, full = zip(*(_layer_bytes(layer) for layer in self.layers)) if self.layers else ((0,), (0,))
        return {
            "sliding_cache_layers": sum(isinstance(layer, SinkWindowLayer) for layer in self.layers),
            "layers": len(self.layers),
            "held_bytes": sum(held),
            "full_cache_bytes": sum(full),
            "saved_bytes": sum(full) - sum(held),
        }


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
def base_of(model) -> PreTrainedModel:
    """The transformers model under a PEFT wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def swaa_of(model) -> SWAAConfig:
    raw = getattr(model.config.get_text_config(), "swaa_config", None)
    if raw is None:
        raise ValueError("model.config.swaa_config is not set: load the model with load_swaa_model or apply_swaa")
    return SWAAConfig.from_dict(raw)


def set_swaa(model, swaa: SWAAConfig):
    """Switch a (possibly PEFT-wrapped) model to the SWAA settings `swaa`, in place."""
    apply_swaa(base_of(model), swaa)
    return model


def default_device(device: str | None = None) -> torch.device:
    """The device asked for, else the GPU when there is one (never the CPU of a GPU machine)."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_swaa_model(
    model: str,
    adapter: str | None = None,
    swaa: SWAAConfig | None = None,
    dtype: str = "auto",
    device: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer ready to generate with SWAA attention.

    `model` is a base model (Hub id or directory), a merged directory, or an adapter
    directory (its base is then found as `resolve_base_model` says). The SWAA settings come
    from `swaa` if given, else the adapter's swaa_config.json, else the model's (file or
    config.json entry), else full attention. The adapter stays a PEFT wrapper, so callers can
    switch it off (`with model.disable_adapter():`).
    """
    if adapter is None and is_adapter_dir(model):
        model, adapter = resolve_base_model(model), model
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    register_swaa_attention()
    loaded = AutoModelForCausalLM.from_pretrained(model, dtype=DTYPES[dtype], attn_implementation=ATTN_IMPLEMENTATION)
    if adapter is not None:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, adapter)
    if swaa is None:
        swaa = find_swaa_config(adapter) if adapter else None
        swaa = swaa or find_swaa_config(model)
    if swaa is None:
        logger.warning("No swaa_config.json found for %s: running full attention", adapter or model)
        swaa = SWAAConfig()
    set_swaa(loaded, swaa).eval()
    loaded.to(default_device(device))
    tokenizer = AutoTokenizer.from_pretrained(adapter if adapter and has_tokenizer(adapter) else model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    logger.info("Loaded %s%s with SWAA: %s", model, f" + adapter {adapter}" if adapter else "", swaa.describe())
    return loaded, tokenizer


# ------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Generation:
    sequences: torch.Tensor  # (batch, new tokens): the generated ids only
    memory: dict | None  # SWAACache.memory_report() after the last step; None without a cache


def left_pad_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Padding tokens in front of each row; raises if a row is padded on the right."""
    mask = attention_mask.bool()
    pad = (~mask).long().cumprod(dim=1).sum(dim=1)
    if bool((mask.sum(1) + pad != mask.shape[1]).any()):
        raise ValueError("attention_mask: prompts must be left-padded for generation (tokenizer.padding_side='left')")
    return pad


def generate_ids(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    use_cache: bool = True,
    past_key_values: SWAACache | None = None,
    **generate_kwargs,
) -> Generation:
    """Generation (greedy unless told otherwise) of left-padded prompts under the model's SWAA settings.

    Any of transformers' generation options works (beams, sampling, `num_return_sequences`,
    `prefill_chunk_size`); `past_key_values` may be a `SWAACache` from an earlier call whose
    tokens `input_ids` starts with (prefix reuse).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    num_layers = model.config.get_text_config().num_hidden_layers
    generate_kwargs.setdefault("do_sample", False)
    swaa, cache = swaa_of(model), None
    if use_cache:
        cache = past_key_values if past_key_values is not None else SWAACache(swaa, num_layers)
        if not isinstance(cache, SWAACache):
            raise ValueError(f"past_key_values must be a SWAACache (from an earlier generate_ids), got {type(cache)}")
        cache.set_prompt(attention_mask)
        generate_kwargs[CACHE_KWARG] = cache
    elif any(swaa.layer_window(i) is not None and swaa.layer_fa_decode(i) for i in range(num_layers)):
        # Recomputing the whole sequence, the attention cannot tell generated tokens from the
        # prompt, and generate() refuses the swaa_full_from kwarg that would tell it.
        raise ValueError("use_cache=False cannot apply FA decode through generate(); use the KV cache")
    token = GENERATION_CACHE.set(cache)
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                use_cache=use_cache,
                **generate_kwargs,
            )
    finally:
        GENERATION_CACHE.reset(token)
    memory = cache.memory_report() if cache is not None else None
    if memory:
        logger.debug(describe_memory(memory))
    return Generation(out[:, input_ids.shape[1] :], memory)


def describe_memory(memory: dict) -> str:
    full = max(memory["full_cache_bytes"], 1)
    return (
        f"KV cache: {memory['held_bytes'] / 2**20:.2f} MiB held of {memory['full_cache_bytes'] / 2**20:.2f} MiB "
        f"a full cache would hold ({100 * memory['saved_bytes'] / full:.0f}% saved by "
        f"{memory['sliding_cache_layers']} of {memory['layers']} layers keeping only sinks + window)"
    )


def format_prompt(tokenizer: PreTrainedTokenizerBase, text: str, system_prompt: str | None = None) -> str:
    """The prompt as one user turn of the chat template (as trained), or as is without a template."""
    if not tokenizer.chat_template:
        return text
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": text}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate_in_batches(
    model,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
    desc: str = "generate",
    **generate_kwargs,
) -> tuple[list[list[int]], dict | None]:
    """The new token ids for each of `texts` (formatted prompts), in input order, batched shortest
    first to waste little on padding; and the KV-cache memory report of the batch with the largest
    cache (None when no batch had one)."""
    from tqdm.auto import tqdm

    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    device = next(model.parameters()).device
    new_ids: list[list[int]] = [[] for _ in texts]
    largest = None
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
        rows = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, padding_side="left", return_tensors="pt")
        result = generate_ids(
            model,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            **generate_kwargs,
        )
        for i, ids in zip(rows, result.sequences.tolist()):
            new_ids[i] = ids
        if result.memory and (largest is None or result.memory["full_cache_bytes"] > largest["full_cache_bytes"]):
            largest = result.memory
    return new_ids, largest


def generate(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    chat: bool = True,
    use_cache: bool = True,
    progress: bool = False,
    desc: str = "generate",
    return_memory: bool = False,
    **generate_kwargs,
) -> list[str] | tuple[list[str], dict | None]:
    """Responses to `prompts` (batched, shortest first to waste little on padding), in input order.

    With `return_memory`, also the KV-cache memory report of the batch with the largest cache.
    """
    texts = [format_prompt(tokenizer, p) if chat else p for p in prompts]
    new_ids, largest = generate_in_batches(
        model, tokenizer, texts, max_new_tokens, batch_size, progress, desc, use_cache=use_cache, **generate_kwargs
    )
    responses = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new_ids]
    if largest and largest["sliding_cache_layers"]:
        logger.info("%s: largest batch: %s", desc, describe_memory(largest))
    return (responses, largest) if return_memory else responses
