"""SWAA attention through transformers' AttentionInterface vs an explicit dense SWAA mask."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import VOCAB, tiny_model
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from swaa_attn import visible
from swaa_train.attention import apply_swaa, check_supported, swaa_attention_forward
from swaa_train.swaa_config import SWAAConfig

DENSE = "dense_swaa_test"


def dense_masks(swaa: SWAAConfig, doc_lens, full_from, num_layers, q_len=None):
    """Per layer, the (T_q, T_k) boolean SWAA mask of a pack, built position by position."""
    total = sum(doc_lens)
    masks = {}
    for layer in range(num_layers):
        window = swaa.layer_window(layer)
        fa = swaa.layer_fa_decode(layer) and window is not None
        mask = torch.zeros(total, total, dtype=torch.bool)
        start = 0
        for n, ff in zip(doc_lens, full_from):
            pos = torch.arange(n)
            mask[start : start + n, start : start + n] = visible(
                pos, pos, window=window, keep_first=swaa.keep_first, full_from=ff if fa else float("inf")
            )
            start += n
        masks[layer] = mask
    return masks


def run_dense(model, input_ids, position_ids, masks):
    """Forward with sdpa under the given per-layer dense masks."""

    def attend(module, query, key, value, attention_mask, **kw):
        mask = masks[module.layer_idx][None, None].to(query.device)
        return sdpa_attention_forward(module, query, key, value, mask, **kw)

    AttentionInterface.register(DENSE, attend)
    model.set_attn_implementation(DENSE)
    with torch.no_grad():
        return model(input_ids=input_ids, position_ids=position_ids).logits


def packed_inputs(doc_lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (1, sum(doc_lens)), generator=g)
    pos = torch.cat([torch.arange(n) for n in doc_lens])[None]
    cu = torch.tensor([0] + list(torch.tensor(doc_lens).cumsum(0)), dtype=torch.int32)
    return ids, pos, cu


SWAA_CASES = [
    SWAAConfig(sliding_window_size=8, keep_first=3, force_fa_decode=True, non_sliding_layers=[1]),
    SWAAConfig(sliding_window_size=5, keep_first=0, force_fa_decode=False),
    SWAAConfig(sliding_window_size=12, keep_first=2, force_fa_decode=[0], non_sliding_layers=[2]),
    SWAAConfig(sliding_window_size=1, keep_first=1, force_fa_decode=True),
]


@pytest.mark.parametrize("case", range(len(SWAA_CASES)))
def test_packed_logits_match_dense_mask(arch, case):
    swaa = SWAA_CASES[case]
    doc_lens, full_from = [37, 20, 1, 51], [25, 20, 0, 30]
    ids, pos, cu = packed_inputs(doc_lens, seed=case)
    model = tiny_model(arch)
    expected = run_dense(model, ids, pos, dense_masks(swaa, doc_lens, full_from, model.config.num_hidden_layers))
    apply_swaa(model, swaa)
    with torch.no_grad():
        got = model(
            input_ids=ids,
            position_ids=pos,
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=max(doc_lens),
            max_length_k=max(doc_lens),
            swaa_full_from=torch.tensor(full_from, dtype=torch.int32),
        ).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_boundaries_from_position_ids_alone():
    """Without cu_seq_lens, documents are found from position_ids restarting at 0."""
    swaa = SWAA_CASES[0]
    doc_lens = [30, 14, 40]
    ids, pos, _ = packed_inputs(doc_lens, seed=3)
    model = tiny_model("qwen3")
    inf = [float("inf")] * 3  # no swaa_full_from given: pure SWA in sliding layers
    expected = run_dense(model, ids, pos, dense_masks(swaa, doc_lens, inf, 3))
    apply_swaa(model, swaa)
    with torch.no_grad():
        got = model(input_ids=ids, position_ids=pos).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_matches_each_row_alone():
    """A padded batch (2-D attention mask) gives each row the logits it has alone."""
    swaa = SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=True, non_sliding_layers=[0])
    model = apply_swaa(tiny_model("llama"), swaa)
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(0, VOCAB, (n,), generator=g) for n in (25, 17)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r) :] = r
        mask[b, width - len(r) :] = 1
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask).logits
        for b, r in enumerate(rows):
            alone = model(input_ids=r[None]).logits[0]
            torch.testing.assert_close(batched[b, width - len(r) :], alone, atol=1e-4, rtol=1e-4)


def test_full_attention_config_equals_sdpa_causal():
    model = tiny_model("qwen2")
    ids = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = apply_swaa(model, SWAAConfig(sliding_window_size=None)).eval()(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_model_outside_attention_interface_is_refused():
    class Legacy(torch.nn.Module):
        _supports_attention_backend = False

    with pytest.raises(ValueError, match="Legacy does not route attention"):
        check_supported(Legacy())


def test_layer_index_past_the_model_is_ignored_with_a_warning(caplog):
    # Settings written for the reference code list layers of its deepest model (issue 15): they
    # are accepted, and the warning names the indices no layer of this model will ask about.
    logger = logging.getLogger("swaa_train.swaa_config")
    logger.addHandler(caplog.handler)
    try:
        model = apply_swaa(tiny_model("qwen3"), SWAAConfig(sliding_window_size=4, non_sliding_layers=[7]))
    finally:
        logger.removeHandler(caplog.handler)
    assert model.config.swaa_config["non_sliding_layers"] == [7]
    assert any(
        "non_sliding_layers: layer index [7] past the last layer of a model of 3 layers" in r.getMessage()
        for r in caplog.records
    )


def test_mixed_dtypes_from_autocast_run_in_the_dtype_of_v():
    """Under autocast an fp32 model's normed q/k stay fp32 while v is bf16."""
    model = apply_swaa(tiny_model("qwen3"), SWAAConfig(sliding_window_size=5, keep_first=1))
    module = model.model.layers[0].self_attn
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, heads, 24, 16, generator=g) for heads in (4, 2, 2))
    expected, _ = swaa_attention_forward(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), None, scaling=0.25)
    got, _ = swaa_attention_forward(module, q, k, v.bfloat16(), None, scaling=0.25)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("batch", [1, 3])
def test_full_layer_sdpa_path_is_causal_attention(batch):
    """The cuDNN route of full-attention layers (taken on CUDA) equals the reference, run here on CPU."""
    from swaa_attn import swaa_attn_varlen_ref
    from swaa_train.attention import _sdpa_causal

    torch.manual_seed(batch)
    q, k, v = torch.randn(batch, 4, 11, 16), torch.randn(batch, 2, 11, 16), torch.randn(batch, 2, 11, 16)
    out = _sdpa_causal(q, k, v, 0.3)
    flat = lambda t: t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3])  # noqa: E731
    cu = torch.arange(batch + 1, dtype=torch.int32) * 11
    ref = swaa_attn_varlen_ref(flat(q), flat(k), flat(v), cu, cu, 11, 11, softmax_scale=0.3)
    torch.testing.assert_close(out.reshape(-1, 4, 16), ref, atol=1e-5, rtol=1e-5)
