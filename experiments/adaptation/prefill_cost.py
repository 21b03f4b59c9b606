"""What a SWAA setting saves: the relative prefill cost (attention pairs computed while reading
the prompt, as a fraction of full causal attention over the same prompts) and the share of the
KV cache it no longer holds.

During prefill every query is a prompt token (`full_from` = prompt length), so FA decode
costs nothing here. The pair counts are the kernel package's closed form of the mask
(`swaa_attn.visible_pairs`). Attention pairs are what the kernel's tile skipping saves; the
projections and MLPs cost the same under every setting.

The KV cache: a sliding layer without FA decode never looks past its sinks and its window, so
its cache keeps `keep_first + window - 1` positions between steps (inference.SinkWindowLayer);
every other layer keeps them all. `kv_cache_saved` is that closed form; the cache's own
`SWAACache.memory_report()` measures the same thing on a real generation (tested).
"""

from __future__ import annotations

from collections.abc import Iterable

from swaa_attn import visible_pairs
from swaa_train.swaa_config import SWAAConfig


def causal_pairs(length: int) -> int:
    """Pairs (i, j), j <= i < length: full causal attention over one sequence."""
    return visible_pairs(length, length)


def sliding_pairs(length: int, window: int | None, keep_first: int = 0) -> int:
    """Pairs visible in one sliding layer over a `length`-token prompt (full causal if window is None)."""
    return visible_pairs(length, length, window=window, keep_first=keep_first)


def prefill_pairs(length: int, swaa: SWAAConfig, num_layers: int) -> int:
    """Pairs computed over all `num_layers` layers while prefilling one prompt."""
    return sum(sliding_pairs(length, swaa.layer_window(i), swaa.keep_first) for i in range(num_layers))


def relative_prefill_cost(lengths: Iterable[int], swaa: SWAAConfig, num_layers: int) -> float:
    """Pairs computed over the prompts of `lengths`, as a fraction of full causal attention."""
    lengths = list(lengths)
    full = num_layers * sum(causal_pairs(n) for n in lengths)
    return sum(prefill_pairs(n, swaa, num_layers) for n in lengths) / full if full else 1.0


def kv_positions_held(length: int, swaa: SWAAConfig, num_layers: int) -> int:
    """Key/value positions the cache holds over all layers once `length` tokens have been cached."""
    held = 0
    for i in range(num_layers):
        window = swaa.layer_window(i)
        sliding_only = window is not None and not swaa.layer_fa_decode(i)
        held += min(length, swaa.keep_first + window - 1) if sliding_only else length
    return held


def kv_cache_saved(lengths: Iterable[int], swaa: SWAAConfig, num_layers: int) -> float:
    """Share of the full KV cache that `swaa` does not hold, over sequences of `lengths` cached
    tokens (token-weighted: the share of the bytes a full cache of all of them would take)."""
    lengths = list(lengths)
    full = num_layers * sum(lengths)
    return 1.0 - sum(kv_positions_held(n, swaa, num_layers) for n in lengths) / full if full else 0.0
