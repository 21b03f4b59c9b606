"""Load the base model (weights or a random-init config) with SWAA attention, and its tokenizer."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from .attention import ATTN_IMPLEMENTATION, apply_swaa, check_supported, register_swaa_attention
from .recipe import ModelArgs
from .swaa_config import SWAAConfig

logger = logging.get_logger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}


def load_tokenizer(args: ModelArgs) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(
        args.tokenizer or args.name_or_path, revision=args.revision, trust_remote_code=args.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(args: ModelArgs, swaa: SWAAConfig) -> PreTrainedModel:
    """The causal LM of `args`, switched to SWAA attention with the settings `swaa`."""
    register_swaa_attention()
    common = dict(revision=args.revision, trust_remote_code=args.trust_remote_code)
    config = AutoConfig.from_pretrained(args.name_or_path, **common)
    check_supported(AutoModelForCausalLM._model_mapping[type(config)])
    dtype = DTYPES[args.dtype]
    if args.from_config:
        logger.info("Random-initialising %s from its config (no weights read)", args.name_or_path)
        model = AutoModelForCausalLM.from_config(
            config,
            dtype=config.dtype if dtype == "auto" else dtype,
            attn_implementation=ATTN_IMPLEMENTATION,
            trust_remote_code=args.trust_remote_code,
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(
            args.name_or_path, config=config, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION, **common
        )
    return apply_swaa(model, swaa)
