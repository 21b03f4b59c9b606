"""Model shapes the benchmarks build from configs (random init, nothing downloaded)."""

from __future__ import annotations

# Qwen/Qwen3-4B-Instruct-2507's config.json, the parts that set the shapes and the arithmetic.
QWEN3_4B = dict(
    hidden_size=2560,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=9728,
    vocab_size=151936,
    max_position_embeddings=262144,
    rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0},
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    hidden_act="silu",
    attention_bias=False,
)
# The recipe qwen3_swa2k's SWAA settings on that shape: every 4th layer keeps full attention.
QWEN3_4B_FULL_LAYERS = list(range(1, 36, 4))
# meta-llama/Llama-3.1-8B-Instruct's config.json, likewise (32 layers: the recipe's full layers
# 1, 5, ..., 29; its layer 33 does not exist there and is ignored with a warning).
LLAMA31_8B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=14336,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500_000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
)
# --shape NAME of the benchmarks: (model_type, shape).
SHAPES = {"qwen3-4b": ("qwen3", QWEN3_4B), "llama3.1-8b": ("llama", LLAMA31_8B)}
