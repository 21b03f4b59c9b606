"""swaa_train.layer_probe: choosing the full-attention layers by the answer loss (CPU, tiny models)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import VOCAB, tiny_model

from swaa_train.attention import FULL_FROM_KEY, apply_swaa
from swaa_train.layer_probe import answer_loss, probe_full_layers
from swaa_train.swaa_config import SWAAConfig

SLIDING = SWAAConfig(sliding_window_size=8, keep_first=2)


def samples(count=3, length=48, answer=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for k in range(count):
        n = length + 4 * k
        ids = torch.randint(3, VOCAB, (n,), generator=generator)
        out.append({"input_ids": ids.tolist(), "completion_mask": [0] * (n - answer) + [1] * answer})
    return out


def hf_loss(model, batch, fa_decode=False) -> float:
    """Token-weighted mean of transformers' own shifted cross-entropy over the supervised tokens."""
    total = count = 0
    for sample in batch:
        ids = torch.tensor(sample["input_ids"])[None]
        mask = torch.tensor(sample["completion_mask"], dtype=torch.bool)
        labels = torch.where(mask, ids[0], -100)[None]
        kwargs = {FULL_FROM_KEY: torch.tensor([int(mask.nonzero()[0])], dtype=torch.int32)} if fa_decode else {}
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels, **kwargs).loss.item()
        n = int(mask[1:].sum())
        total, count = total + loss * n, count + n
    return total / count


@pytest.mark.parametrize(
    "swaa,fa", [(SWAAConfig(), False), (SLIDING, False), (SWAAConfig(8, 2, True, [1]), True)], ids=str
)
def test_answer_loss_is_the_models_own_loss(swaa, fa):
    model = apply_swaa(tiny_model("qwen3"), swaa)
    batch = samples()
    loss, tokens = answer_loss(model, batch, fa_decode=fa)
    assert tokens == sum(sum(s["completion_mask"][1:]) for s in batch)
    assert loss == pytest.approx(hf_loss(model, batch, fa_decode=fa), rel=1e-5)


def greedy_answers(model, prompts: list[list[int]], answer=10) -> list[dict]:
    """Samples whose answers are the model's own greedy continuation of each prompt."""
    out = []
    for prompt in prompts:
        ids = torch.tensor(prompt)[None]
        with torch.no_grad():
            for _ in range(answer):
                ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
        out.append({"input_ids": ids[0].tolist(), "completion_mask": [0] * len(prompt) + [1] * answer})
    return out


def test_the_probe_finds_the_one_layer_that_reads_far_back():
    """Every attention output but layer 2's is zeroed, so only layer 2's attention span can
    change the loss, and the answers are what the model says under full attention: the probe
    must take layer 2 first, and with it reach full attention's loss."""
    model = tiny_model("qwen3", seed=1)
    for index, layer in enumerate(model.model.layers):
        if index != 2:
            torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
    apply_swaa(model, SWAAConfig())
    batch = greedy_answers(model, [s["input_ids"] for s in samples(length=64, answer=0)])
    apply_swaa(model, SWAAConfig(16, 1, False, [0]))
    before = dict(model.config.swaa_config)
    result = probe_full_layers(model, batch, SLIDING, budget=2)
    assert result.chosen[0] == 2
    assert result.loss_after(0) == pytest.approx(result.full_attention_loss, rel=1e-5)
    others = [loss for layer, loss in result.rounds[0].items() if layer != 2]
    assert others == pytest.approx([result.all_sliding_loss] * 2, rel=1e-5)
    assert result.all_sliding_loss > result.full_attention_loss + 1e-3  # the window does cut something
    assert result.recovered(result.loss_after(0)) == pytest.approx(1.0, abs=1e-3)
    assert result.final_loss == pytest.approx(result.loss_after(1), rel=1e-9)
    assert model.config.swaa_config == before and not model.training  # settings restored


def test_greedy_rounds_against_brute_force():
    model = apply_swaa(tiny_model("qwen3", seed=2), SLIDING)
    batch = samples(count=2, length=40)
    result = probe_full_layers(model, batch, SLIDING, budget=2)
    for round_index, losses in enumerate(result.rounds):
        chosen = result.chosen[:round_index]
        assert set(losses) == {0, 1, 2} - set(chosen)
        for layer, loss in losses.items():
            apply_swaa(model, SWAAConfig(8, 2, False, [*chosen, layer]))
            assert loss == pytest.approx(hf_loss(model, batch), rel=1e-5)
        assert result.chosen[round_index] == min(losses, key=losses.get)
    apply_swaa(model, SWAAConfig())
    assert result.full_attention_loss == pytest.approx(hf_loss(model, batch), rel=1e-5)
    assert "| layer |" in result.table() and json.loads(json.dumps(result.to_dict()))["chosen"] == result.chosen


def test_ranked_mode_keeps_the_best_single_layers():
    model = apply_swaa(tiny_model("qwen3", seed=2), SLIDING)
    batch = samples(count=2, length=40)
    result = probe_full_layers(model, batch, SLIDING, budget=2, greedy=False)
    (alone,) = result.rounds
    assert result.chosen == sorted(alone, key=alone.get)[:2] and not result.greedy
    apply_swaa(model, SWAAConfig(8, 2, False, result.chosen))
    assert result.final_loss == pytest.approx(hf_loss(model, batch), rel=1e-5)
    assert "one round, ranked" in result.table()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(budget=0), "budget must be between 1 and the 3"),
        (dict(budget=4), "budget must be between 1 and the 3"),
        (dict(budget=1, candidates=[0, 5]), r"candidate layers \[5\]"),
        (dict(budget=1, swaa=SWAAConfig()), "nothing to probe"),
        (dict(budget=1, batch=[]), "no samples"),
        (dict(budget=1, batch=[{"input_ids": [5, 6, 7], "completion_mask": [0, 0, 0]}]), "no sample has supervised"),
    ],
)
def test_bad_probe_arguments(kwargs, message):
    model = apply_swaa(tiny_model("qwen3"), SLIDING)
    batch = kwargs.pop("batch", samples(count=1))
    swaa = kwargs.pop("swaa", SLIDING)
    with pytest.raises(ValueError, match=message):
        probe_full_layers(model, batch, swaa, **kwargs)
    assert model.config.swaa_config == SLIDING.to_dict()


def test_probe_layers_command_on_the_demo_recipe(tmp_path, capsys):
    from swaa_train.cli import main

    out = tmp_path / "probe.json"
    main(["probe-layers", "--recipe", "demo", "--samples", "2", "--budget", "1", "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert len(data["chosen"]) == 1 and f"swaa.non_sliding_layers={data['chosen']}" in printed
    assert data["samples"] == 2 and data["setting"]["non_sliding_layers"] == []
    assert set(data["rounds"][0]) == {"0", "1", "2", "3"}  # the demo model's four layers


def test_probe_layers_command_names_a_bad_field(capsys):
    from swaa_train.cli import main

    with pytest.raises(SystemExit):
        main(["probe-layers", "--recipe", "demo", "swaa.sliding_window_size=0"])
    assert "sliding_window_size" in capsys.readouterr().err
