"""The shipped tiny demo model: a Qwen3-architecture config and a byte-level BPE tokenizer.

Both live in swaa_train/assets/tiny-qwen3/ (no weights: the demo random-initialises the
model from the config), built offline and deterministically by scripts/build_demo_assets.py
from the synthetic long-context QA text, so the demo and the tests need no download.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config

from .synthetic import make_longqa_rows

TINY_QWEN3_DIR = Path(__file__).resolve().parent / "assets" / "tiny-qwen3"

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"  # ChatML end of turn: generation stops here
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, EOS_TOKEN]

# ChatML. The {% generation %} block lets apply_chat_template(return_assistant_tokens_mask=True)
# mark assistant tokens; it covers the content and the "<|im_end|>\n" that closes the turn,
# exactly what follows the add_generation_prompt rendering, so both ways of finding the
# supervised tokens agree.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>\\n' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def tokenizer_corpus(num_rows: int = 200, seed: int = 0) -> list[str]:
    """Text the tokenizer is trained on: synthetic QA rows of both splits and the chat roles."""
    texts = ["You are a helpful assistant."]
    for split in ("train", "eval"):
        for row in make_longqa_rows(num_rows, seed=seed, split=split, min_words=100, max_words=300):
            texts += ["user", row["prompt"], "assistant", row["response"]]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any byte encodes) with ChatML special tokens and template."""
    backend = Tokenizer(models.BPE())
    # Digits split one by one (as Qwen's tokenizers do): copying a number is then the same
    # skill for every number, which the long-context QA task needs.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    # Offsets must map back to characters for return_assistant_tokens_mask.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )


def tiny_qwen3_config(tokenizer: PreTrainedTokenizerFast) -> Qwen3Config:
    """A 4-layer Qwen3 (GQA 4:2, head_dim 64) sized to the tokenizer, 32k positions."""
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_demo_assets(out_dir: str | Path = TINY_QWEN3_DIR, vocab_size: int = 2048, seed: int = 0) -> Path:
    """Write the tiny Qwen3 config and tokenizer files to `out_dir`; returns it."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(tokenizer_corpus(seed=seed), vocab_size=vocab_size)
    tokenizer.save_pretrained(out_dir)
    # Name the class every transformers release knows (5.x writes its own "TokenizersBackend",
    # which 4.x loaders of an exported model cannot resolve).
    config_path = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config["additional_special_tokens"] = tokenizer_config.pop("extra_special_tokens")  # a list in 4.x
    config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
    tiny_qwen3_config(tokenizer).save_pretrained(out_dir)
    return out_dir
