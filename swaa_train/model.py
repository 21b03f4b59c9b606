"""Load the base model (weights or a random-init config) with SWAA attention, and its tokenizer."""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging

from .attention import ATTN_IMPLEMENTATION, apply_swaa, check_supported, register_swaa_attention
from .recipe import ModelArgs
from .swaa_config import SWAAConfig

logger = logging.get_logger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}
# Config fields that hold the attention-probability dropout (GPT-2: attn_pdrop).
ATTENTION_DROPOUT_FIELDS = ("attention_dropout", "attn_pdrop", "attn_dropout", "attention_probs_dropout_prob")


def load_tokenizer(args: ModelArgs) -> PreTrainedTokenizerBase:
    source = args.tokenizer or args.name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=args.revision, trust_remote_code=args.trust_remote_code
        )
    except OSError as err:  # not a folder with a tokenizer, not on the Hub, or offline
        field = "model.tokenizer" if args.tokenizer else "model.name_or_path"
        raise ValueError(f"{field}: cannot load a tokenizer from {source!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(args: ModelArgs) -> PretrainedConfig:
    """The model's config, checked for what SWAA training needs before anything is written."""
    try:
        config = AutoConfig.from_pretrained(
            args.name_or_path, revision=args.revision, trust_remote_code=args.trust_remote_code
        )
    except OSError as err:  # not a model folder, not on the Hub, or offline
        message = str(err).splitlines()[0]
        raise ValueError(
            f"model.name_or_path: cannot load a model config from {args.name_or_path!r}: {message}"
        ) from None
    check_supported(causal_lm_class(config, args))
    disable_attention_dropout(config)
    return config


def causal_lm_class(config: PretrainedConfig, args: ModelArgs) -> type[PreTrainedModel]:
    """The class AutoModelForCausalLM builds for `config`: transformers' own, or the model's remote code."""
    auto_map = getattr(config, "auto_map", None) or {}
    if args.trust_remote_code and "AutoModelForCausalLM" in auto_map:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        reference = auto_map["AutoModelForCausalLM"]
        reference = reference[0] if isinstance(reference, (list, tuple)) else reference
        return get_class_from_dynamic_module(reference, args.name_or_path, revision=args.revision)
    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise ValueError(
            f"model.name_or_path: {args.name_or_path!r} (model_type {config.model_type!r}) is not a causal LM "
            "transformers knows"
            + ("" if args.trust_remote_code else "; if it ships its own code, set model.trust_remote_code=true")
        ) from None


def disable_attention_dropout(config: PretrainedConfig) -> None:
    """SWAA attention has no dropout on the attention probabilities: set it to 0, with a warning
    (GPT-2's attn_pdrop is 0.1). Dropout elsewhere (residual, embeddings) is kept."""
    for cfg in {id(c): c for c in (config, config.get_text_config())}.values():
        for name in ATTENTION_DROPOUT_FIELDS:
            value = getattr(cfg, name, None)
            if isinstance(value, (int, float)) and value > 0:
                logger.warning(
                    "%s=%s in the model config: set to 0 (SWAA attention has no attention dropout)", name, value
                )
                setattr(cfg, name, 0.0)


def position_limit(config: PretrainedConfig) -> int | None:
    """The longest sequence the model has positions for (max_position_embeddings), if it says."""
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def load_model(args: ModelArgs, swaa: SWAAConfig, config: PretrainedConfig | None = None) -> PreTrainedModel:
    """The causal LM of `args`, switched to SWAA attention with the settings `swaa`."""
    register_swaa_attention()
    common = dict(revision=args.revision, trust_remote_code=args.trust_remote_code)
    config = config if config is not None else load_config(args)
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
