"""SWAATrainer: packing, full_from, the supervised-positions loss, saving and resuming."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import VOCAB, tiny_model
from datasets import Dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from swaa_train.attention import apply_swaa
from swaa_train.config import SWAAConfig
from swaa_train.trainer import IGNORE_INDEX, FullFromCollator, first_supervised

SWAA = SWAAConfig(sliding_window_size=6, keep_first=2, force_fa_decode=True, non_sliding_layers=[1])


def test_first_supervised_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 9, 4, 7]
    labels = torch.randint(0, 5, (sum(lengths),), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.6] = IGNORE_INDEX
    labels[5] = IGNORE_INDEX  # the length-1 document has no supervised token
    cu = torch.tensor([0, 5, 6, 15, 19, 26], dtype=torch.int32)
    expected = []
    for b, n in enumerate(lengths):
        doc = labels[cu[b]:cu[b + 1]].tolist()
        expected.append(next((i for i, t in enumerate(doc) if t != IGNORE_INDEX), n))
    assert first_supervised(labels, cu).tolist() == expected


def _examples(lengths, answer_lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, a in zip(lengths, answer_lengths):
        ids = torch.randint(1, VOCAB, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n - a) + ids[n - a:]})
    return out


def _per_document_losses(model, batch):
    """Summed next-token NLL of each document of a collated batch, from the full logits."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
    logp = torch.log_softmax(logits[0, :-1].float(), -1)
    target = batch["labels"][0, 1:]
    nll = torch.where(target != IGNORE_INDEX, -logp.gather(-1, target.clamp(min=0)[:, None])[:, 0], 0.0)
    cu = batch["cu_seq_lens_q"].tolist()
    # The token predicting document b's position t sits at t - 1: sum nll over [start, end - 1).
    return [nll[cu[b]:cu[b + 1] - 1].sum() for b in range(len(cu) - 1)]


def test_collator_adds_full_from_per_document():
    collator = FullFromCollator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))
    batch = collator(_examples([12, 7, 20], [3, 7, 5]))
    # First supervised token per document; TRL masks each document's first label, so a
    # fully supervised document starts at 1.
    assert batch["swaa_full_from"].tolist() == [9, 1, 15]
    assert batch["cu_seq_lens_q"].tolist() == [0, 12, 19, 39]


def test_packed_batch_gives_each_document_its_own_loss():
    model = apply_swaa(tiny_model("qwen3"), SWAA)
    collator = FullFromCollator(DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True))
    examples = _examples([30, 11, 25], [6, 4, 10], seed=1)
    packed = _per_document_losses(model, collator(examples))
    for b, example in enumerate(examples):
        alone = _per_document_losses(model, collator([example]))[0]
        torch.testing.assert_close(packed[b], alone, atol=1e-4, rtol=1e-4)
