"""Shared fixtures: tiny random-init models of real architectures (no download)."""

from __future__ import annotations

import os

import pytest
import torch

# Without CUDA the Triton kernel tests run under the interpreter. Triton reads this once, when it is
# first imported, so it is set here, before any test module imports it (torch does not import triton).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

VOCAB = 97

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)

TINY_CONFIGS = {
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=16),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "llama": lambda: LlamaConfig(**_COMMON),
    "mistral": lambda: MistralConfig(**_COMMON, sliding_window=None),
    "qwen3_moe": lambda: Qwen3MoeConfig(
        **{**_COMMON, "intermediate_size": 64},
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        decoder_sparse_step=1,
    ),
}


def tiny_model(arch: str, seed: int = 0, attn_implementation: str = "sdpa"):
    torch.manual_seed(seed)
    config = TINY_CONFIGS[arch]()
    config._attn_implementation = attn_implementation
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()


@pytest.fixture(params=sorted(TINY_CONFIGS))
def arch(request):
    return request.param


@pytest.fixture(autouse=True)
def _restore_package_logger():
    """`swaa_train.cli.main` gives the package logger its own handler and stops propagation, which
    would hide later tests' records from caplog: put the logger back after each test."""
    import logging

    package = logging.getLogger("swaa_train")
    state = (list(package.handlers), package.propagate, package.level)
    yield
    package.handlers[:], package.propagate, package.level = state[0], state[1], state[2]
