"""The training-step benchmark's parts: the batch, the SDPA baseline, the time split, the estimates."""

from __future__ import annotations

import json
import math

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from benchmarks.bench_train import (
    ALL_ON,
    ALL_SWA,
    FULL,
    RECIPE_SWAA,
    TECHNIQUES,
    Cell,
    classify,
    grid,
    largest_fit,
    packed_example,
    parse_cells,
    predict_step_s,
    sdpa_varlen_attention,
    table,
)
from swaa_attn import swaa_attn_varlen_ref
from swaa_train.attention import IGNORE_INDEX
from swaa_train.swaa_config import SWAAConfig
from swaa_train.trainer import FullFromCollator


def test_packed_example_supervises_the_end_of_each_document():
    example = packed_example(100, 40, supervised=8, vocab=50)
    assert example["seq_lengths"] == [40, 40, 20]
    ids, labels = example["input_ids"], example["labels"]
    assert len(labels) == len(ids) == 100
    for start, n in ((0, 40), (40, 40), (80, 20)):
        end = start + n
        assert labels[start:end] == [IGNORE_INDEX] * (n - 8) + ids[end - 8 : end]
    batch = FullFromCollator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))([example])
    assert batch["swaa_full_from"].tolist() == [32, 32, 12]
    assert batch["cu_seq_lens_q"].tolist() == [0, 40, 80, 100]
    assert packed_example(64, None, 8, 50)["seq_lengths"] == [64]


def test_sdpa_baseline_is_full_causal_per_document():
    g = torch.Generator().manual_seed(0)
    lens, hq, hkv, d = [13, 5, 22], 4, 2, 8
    total = sum(lens)
    q, k, v = (torch.randn(1, h, total, d, generator=g) for h in (hq, hkv, hkv))
    cu = torch.tensor([0, 13, 18, 40], dtype=torch.int32)
    out, _ = sdpa_varlen_attention(None, q, k, v, None, scaling=0.3, cu_seq_lens_q=cu)
    flat = lambda t: t[0].transpose(0, 1)  # noqa: E731  (total, heads, dim)
    expected = swaa_attn_varlen_ref(flat(q), flat(k), flat(v), cu, cu, 22, 22, softmax_scale=0.3)
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kernel, ops, category",
    [
        ("void cutlass_80_wmma_gemm", ["aten::mm", "MmBackward0"], "linear"),
        ("nvjet_tst_128x256", ["aten::mm", "optimizer", "Optimizer.step#AdamW.step"], "optimizer"),
        ("_fused_adamw", ["Optimizer.step#AdamW.step"], "optimizer"),
        ("_fwd_kernel", ["SWAAAttnFunction"], "attention"),
        ("_bwd_dkdv_kernel", ["SWAAAttnFunctionBackward"], "attention"),
        ("cudnn_generated_fort_native_sdpa", ["aten::_scaled_dot_product_cudnn_attention"], "attention"),
        ("nvjet_tst_64x8", ["aten::mm", "_ChunkedLogProbFunction"], "loss"),
        ("triton_logprob", ["_ChunkedLogProbFunctionBackward"], "loss"),
        ("Memcpy DtoH (Device -> Pinned)", ["aten::copy_"], "copy"),
        ("_rms_norm_forward_kernel", ["LigerRMSNormFunction"], "other"),
        ("elementwise_kernel", ["aten::add"], "other"),
    ],
)
def test_classify(kernel, ops, category):
    assert classify(kernel, ops) == category


def _cells(attention, step, peak):
    return [Cell(attention, t, step_s=step(t), peak_gib=peak(t)) for t in (16384, 32768, 65536, 131072)]


def test_estimates_recover_linear_and_quadratic_costs():
    step = lambda t: 2e-5 * t + 3e-10 * t * t  # noqa: E731
    peak = lambda t: 9.0 + 1e-4 * t  # noqa: E731
    cells = _cells(RECIPE_SWAA, step, peak)
    assert math.isclose(predict_step_s(cells, RECIPE_SWAA, 262144), step(262144), rel_tol=1e-6)
    assert predict_step_s(cells, FULL, 262144) is None  # nothing measured for it
    # (80 - 9) / 1e-4 = 710000 tokens -> the 16k step below it
    assert largest_fit(cells, RECIPE_SWAA, capacity_gib=80.0) == 710000 // 16384 * 16384


def test_grid_runs_liger_free_techniques_first_and_cheap_attention_first():
    cells = grid([32768, 65536], [32768])
    techniques = [c.technique for c in cells]
    assert techniques[0] == "none" and not TECHNIQUES["none"].liger_kernel  # before liger enters the model
    assert techniques[:2] == ["none", "liger"]
    assert [c.attention for c in cells[2:5]] == [ALL_SWA, RECIPE_SWAA, FULL]
    assert len(cells) == 2 + 2 * 3 and all(c.technique == ALL_ON for c in cells[2:])


def test_parse_cells():
    cells = parse_cells("swa@256k, recipe@480k/liger,full@1000")
    assert [(c.attention, c.tokens, c.technique) for c in cells] == [
        (ALL_SWA, 262144, ALL_ON),
        (RECIPE_SWAA, 491520, "liger"),
        (FULL, 1000, ALL_ON),
    ]
    assert parse_cells("") == []
    with pytest.raises(ValueError, match="attention one of"):
        parse_cells("flash@16k")


def test_table_reports_speedup_and_failures():
    cells = [
        Cell(FULL, 32768, step_s=4.0, peak_gib=30.0, seconds={"attention": 2.5}),
        Cell(RECIPE_SWAA, 32768, step_s=2.0, peak_gib=20.0),
        Cell(ALL_SWA, 32768, status="OOM"),
    ]
    text = table(cells)
    assert "| SWAA recipe | defaults | 32k | 16,384 | 2.00x | 20.0 |" in text
    assert "| SWA all layers | defaults | 32k | OOM |" in text
    assert "| full causal (SDPA) | defaults | 32k | 8,192 | - | 30.0 | 4.00 | 2.50 |" in text


def test_llama_shape_builds_a_llama_with_llama3_rope(tmp_path):
    from benchmarks.bench_train import TINY_ASSETS, TINY_SIZES, build_model
    from benchmarks.shapes import SHAPES

    model_type, shape = SHAPES["llama3.1-8b"]
    tiny = json.loads((TINY_ASSETS / "config.json").read_text())
    model = build_model(model_type, {**shape, **{k: tiny[k] for k in TINY_SIZES}}, SWAAConfig(64, 4), "cpu", tmp_path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.rope_parameters["rope_type"] == "llama3" and not model.config.tie_word_embeddings
