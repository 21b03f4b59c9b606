"""Relative prefill cost of SWAA settings: attention pairs computed while reading the prompt,
as a fraction of full causal attention over the same prompts.

During prefill every query is a prompt token (`full_from` = prompt length), so FA decode
costs nothing here. The pair counts are the kernel package's closed form of the mask
(`swaa_attn.visible_pairs`). Attention pairs are what the kernel's tile skipping saves; the
projections and MLPs cost the same under every setting.
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
