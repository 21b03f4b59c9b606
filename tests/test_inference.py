"""SWAA generation: the KV cache (sinks + window for pure-SWA layers) against full recomputation."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_model
from transformers.cache_utils import DynamicLayer

from swaa_train.attention import apply_swaa
from swaa_train.inference import SinkWindowLayer, SWAACache, generate_ids, left_pad_lengths
from swaa_train.swaa_config import SWAAConfig

WINDOW, SINKS = 5, 3

SETTINGS = {
    "swa+sinks+fa_decode+interleave": SWAAConfig(WINDOW, SINKS, True, [1]),
    "swa+sinks": SWAAConfig(WINDOW, SINKS, False, [1]),
    "naive_swa": SWAAConfig(WINDOW, 0, False, []),
    "fa_decode_on_layer0_only": SWAAConfig(WINDOW, SINKS, [0], []),
}


def _model(swaa: SWAAConfig, seed: int = 0):
    model = tiny_model("qwen3", seed=seed)
    # Sharpen the random model's logits so that greedy choices are far from ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return apply_swaa(model, swaa)


def _left_padded(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(1, VOCAB, (n,), generator=g)
        mask[row, width - n :] = 1
    return ids, mask


@torch.no_grad()
def greedy_without_cache(model, input_ids, attention_mask, steps: int) -> torch.Tensor:
    """Greedy decoding that recomputes the whole sequence every step under the SWAA mask,
    with FA decode from each row's prompt length (DESIGN.md's full_from at inference)."""
    prompt_lengths = attention_mask.sum(1).to(torch.int32)
    ids, mask = input_ids, attention_mask
    for _ in range(steps):
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, swaa_full_from=prompt_lengths, use_cache=False
        ).logits
        next_ids = logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, next_ids], 1), torch.cat([mask, torch.ones_like(next_ids)], 1)
    return ids[:, input_ids.shape[1] :]


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("lengths", [[21], [21, 12, 4]], ids=["one", "left-padded"])
def test_cached_generation_equals_full_recomputation(setting, lengths):
    model = _model(SETTINGS[setting])
    ids, mask = _left_padded(lengths)
    steps = 16  # the short rows cross window + sinks while decoding
    expected = greedy_without_cache(model, ids, mask, steps)
    got = generate_ids(model, ids, mask, max_new_tokens=steps, eos_token_id=None, pad_token_id=0).sequences
    assert got.tolist() == expected.tolist()
    if SETTINGS[setting].force_fa_decode:  # generate() cannot be told where the prompt ends without a cache
        with pytest.raises(ValueError, match="use_cache=False"):
            generate_ids(model, ids, mask, max_new_tokens=steps, use_cache=False)
    else:
        got = generate_ids(
            model, ids, mask, max_new_tokens=steps, use_cache=False, eos_token_id=None, pad_token_id=0
        ).sequences
        assert got.tolist() == expected.tolist()


def test_sliding_cache_holds_at_most_window_plus_sinks():
    swaa = SETTINGS["swa+sinks"]
    model = _model(swaa)
    ids, mask = _left_padded([30, 9])
    steps = 12
    cache = SWAACache(swaa, model.config.num_hidden_layers, left_pad_lengths(mask))
    model.generate(
        input_ids=ids,
        attention_mask=mask,
        past_key_values=cache,
        max_new_tokens=steps,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    total = ids.shape[1] + steps - 1  # the last token is sampled, never fed back
    for i, layer in enumerate(cache.layers):
        if swaa.layer_window(i) is None:  # interleaved full-attention layer keeps everything
            assert isinstance(layer, DynamicLayer) and not isinstance(layer, SinkWindowLayer)
            assert layer.keys.shape[-2] == total
        else:
            assert isinstance(layer, SinkWindowLayer)
            assert layer.keys.shape[-2] <= WINDOW + SINKS
    report = cache.memory_report()
    kv_per_position = 2 * 2 * 2 * 16 * 4  # (k, v) x batch x kv heads x head_dim x fp32
    assert report["sliding_cache_layers"] == 2
    assert report["saved_bytes"] == 2 * kv_per_position * (total - (WINDOW + SINKS - 1))
    assert report["full_cache_bytes"] == 3 * kv_per_position * total


def test_sink_layer_keeps_each_rows_own_sinks():
    """Left padding: a long row's sinks are its first real tokens, not the padding in front."""
    layer = SinkWindowLayer(sliding_window=3, keep_first=2, pad_lengths=torch.tensor([0, 4]))
    positions = torch.arange(10, dtype=torch.float)
    keys = positions.expand(2, 1, 10)[..., None].contiguous()  # a key's value is its position
    layer.update(keys, keys)
    # row 0: real 0..9 -> sinks 0, 1 + last two 8, 9; row 1: padding 0..3, real 4..9 -> sinks 4, 5
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 1, 8, 9], [4, 5, 8, 9]]
    step = torch.full((2, 1, 1, 1), 10.0)
    full, _ = layer.update(step, step)
    assert full[:, 0, :, 0].tolist() == [[0, 1, 8, 9, 10], [4, 5, 8, 9, 10]]
    assert layer.get_seq_length() == 11


def test_short_row_keeps_a_plain_suffix_until_it_outgrows_the_cache():
    layer = SinkWindowLayer(sliding_window=3, keep_first=1, pad_lengths=torch.tensor([0, 5]))
    keys = torch.arange(8, dtype=torch.float).expand(2, 1, 8)[..., None].contiguous()
    layer.update(keys, keys)  # row 1 has 3 real tokens (5, 6, 7) = capacity: a suffix
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 6, 7], [5, 6, 7]]
    step = torch.full((2, 1, 1, 1), 8.0)
    layer.update(step, step)  # row 1 now has 4 real tokens: its sink 5 stays
    assert layer.keys[:, 0, :, 0].tolist() == [[0, 7, 8], [5, 7, 8]]


def test_right_padding_is_refused():
    with pytest.raises(ValueError, match="left-padded"):
        left_pad_lengths(torch.tensor([[1, 1, 0]]))
