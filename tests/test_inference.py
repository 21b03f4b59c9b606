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


# ------------------------------------------------------------------------------------------
# The paths users take: chunked prefill, a reused cache, beams and several returns per prompt
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting", ["swa+sinks+fa_decode+interleave", "swa+sinks", "fa_decode_on_layer0_only"])
@pytest.mark.parametrize("lengths", [[21], [21, 12, 4]], ids=["one", "left-padded"])
def test_chunked_prefill_equals_one_shot_prefill(setting, lengths):
    model = _model(SETTINGS[setting])
    ids, mask = _left_padded(lengths)
    expected = greedy_without_cache(model, ids, mask, steps=6)
    one_shot = generate_ids(model, ids, mask, max_new_tokens=6).sequences
    chunked = generate_ids(model, ids, mask, max_new_tokens=6, prefill_chunk_size=4).sequences
    assert torch.equal(one_shot, expected)
    assert torch.equal(chunked, expected)


@torch.no_grad()
def test_chunked_prefill_logits_match_one_shot():
    """The issue's check: next-token logits after a chunked prefill equal a one-shot prefill's."""
    model = _model(SETTINGS["swa+sinks+fa_decode+interleave"])
    ids, _ = _left_padded([33], seed=3)
    full_from = torch.tensor([33], dtype=torch.int32)
    reference = model(input_ids=ids, swaa_full_from=full_from, use_cache=False).logits[:, -1]
    cache = SWAACache(SETTINGS["swa+sinks+fa_decode+interleave"], 3)
    cache.set_prompt(torch.ones_like(ids))
    from swaa_train.attention import GENERATION_CACHE

    token = GENERATION_CACHE.set(cache)
    try:
        for start in range(0, 33, 16):  # chunks of 16, 16, 1: the last one is one prompt token
            logits = model(input_ids=ids[:, start : start + 16], past_key_values=cache, use_cache=True).logits
    finally:
        GENERATION_CACHE.reset(token)
    torch.testing.assert_close(logits[:, -1], reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("setting", ["swa+sinks+fa_decode+interleave", "swa+sinks"])
def test_reused_cache_continues_like_one_shot(setting):
    model = _model(SETTINGS[setting])
    ids, mask = _left_padded([30, 17], seed=5)
    prefix = 19
    cache = SWAACache(SETTINGS[setting], 3)
    # A first call that only prefills the prefix (its one generated token is not cached).
    generate_ids(model, ids[:, :prefix], mask[:, :prefix], max_new_tokens=1, past_key_values=cache)
    assert all(layer.get_seq_length() == prefix for layer in cache.layers)
    reused = generate_ids(model, ids, mask, max_new_tokens=6, past_key_values=cache).sequences
    assert torch.equal(reused, greedy_without_cache(model, ids, mask, steps=6))


@pytest.mark.parametrize("setting", ["swa+sinks+fa_decode+interleave", "swa+sinks"])
def test_beam_search_over_a_padded_batch_matches_each_prompt_alone(setting):
    model = _model(SETTINGS[setting])
    ids, mask = _left_padded([21, 9], seed=7)
    options = dict(max_new_tokens=5, num_beams=3, num_return_sequences=2)
    batched = generate_ids(model, ids, mask, **options).sequences
    assert batched.shape == (4, 5)
    for row, n in enumerate([21, 9]):
        alone = generate_ids(model, ids[row : row + 1, -n:], None, **options).sequences
        assert torch.equal(batched[2 * row : 2 * row + 2], alone), row


def test_sampling_several_returns_per_padded_prompt():
    model = _model(SETTINGS["swa+sinks"])
    ids, mask = _left_padded([21, 9], seed=8)
    out = generate_ids(model, ids, mask, max_new_tokens=4, do_sample=True, num_return_sequences=3).sequences
    assert out.shape == (6, 4) and int(out.min()) >= 0


def test_attention_arguments_the_kernel_cannot_honour_are_refused():
    from swaa_train.attention import swaa_attention_forward

    model = _model(SETTINGS["swa+sinks"])
    layer = model.model.layers[0].self_attn
    q = torch.randn(1, 4, 6, 16)
    kv = torch.randn(1, 2, 6, 16)
    for name in ("softcap", "s_aux"):
        with pytest.raises(ValueError, match=f"Qwen3Attention uses .*`{name}`"):
            swaa_attention_forward(layer, q, kv, kv, None, scaling=0.25, **{name: torch.ones(1)})


def test_generation_defaults_to_the_gpu_when_there_is_one(monkeypatch):
    from swaa_train.inference import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")
    assert default_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_generation_on_cuda_matches_recomputation(setting):
    """On CUDA the prompt goes through the Triton kernel and decoding through SDPA over the
    cache: chunked, batched generation still equals recomputing everything (fp32)."""
    model = _model(SETTINGS[setting]).cuda()
    ids, mask = (t.cuda() for t in _left_padded([40, 23, 9], seed=11))
    expected = greedy_without_cache(model, ids, mask, steps=6)
    assert torch.equal(generate_ids(model, ids, mask, max_new_tokens=6).sequences, expected)
    assert torch.equal(generate_ids(model, ids, mask, max_new_tokens=6, prefill_chunk_size=8).sequences, expected)
