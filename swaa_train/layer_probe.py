"""Which layers to keep at full attention, measured on the model and data at hand.

Without FA decode, a model adapted to sliding-window attention reaches a fact far back in its
prompt only through the layers that keep full attention, and which layers carry that lookup
differs from model to model: in the adaptation study (docs/adaptation.md) three bases trained
alike, with other seeds, each answered at full-attention accuracy when one particular layer
stayed full and at the in-window floor otherwise, and the layer was a different one for each.
A fixed pattern ("1, 5, 9, ...") fits some models and misses others.

`probe_full_layers` picks the layers greedily: starting from every layer sliding, each round
evaluates, for every layer not yet chosen, the loss of the supervised (answer) tokens of a few
long samples with that layer added to the full-attention set, and keeps the layer that lowers
it most. Nothing is trained; each round is one forward pass per candidate layer and sample.
`swaa-train probe-layers --recipe NAME` runs it on a recipe's model and data and prints the
`swaa.non_sliding_layers` to train with.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers.utils import logging

from .attention import FULL_FROM_KEY, apply_swaa
from .swaa_config import SWAAConfig

logger = logging.get_logger(__name__)


@dataclass
class ProbeResult:
    """The layers chosen, in order, and every loss measured on the way."""

    setting: dict  # the sliding setting probed (non_sliding_layers empty)
    chosen: list[int]
    all_sliding_loss: float
    full_attention_loss: float
    rounds: list[dict[int, float]] = field(default_factory=list)  # per round: loss with each candidate added
    samples: int = 0
    supervised_tokens: int = 0
    greedy: bool = True  # False: one round, the layers whose full attention alone helps most
    final_loss: float = float("nan")  # with every chosen layer full

    def loss_after(self, round_index: int) -> float:
        """Greedy: the loss once the layers of rounds 0..round_index are full."""
        return self.rounds[round_index][self.chosen[round_index]]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["rounds"] = [{str(k): v for k, v in losses.items()} for losses in self.rounds]
        return data

    def recovered(self, loss: float) -> float:
        """Share of the gap between all-sliding and full attention that `loss` closes."""
        gap = self.all_sliding_loss - self.full_attention_loss
        return (self.all_sliding_loss - loss) / gap if gap > 0 else float("nan")

    def table(self) -> str:
        """Markdown: each layer's loss when it alone keeps full attention, and the greedy choice."""
        rows = [
            "| layer | loss with this layer alone full | chosen | loss once chosen (greedy) | gap closed |",
            "| --- | --- | --- | --- | --- |",
        ]
        alone = self.rounds[0] if self.rounds else {}
        order = {layer: k for k, layer in enumerate(self.chosen)}
        for layer in sorted(alone, key=alone.get):
            k = order.get(layer)
            after = "" if k is None or not self.greedy else f"{self.loss_after(k):.4f}"
            closed = "" if not after else f"{100 * self.recovered(self.loss_after(k)):.0f}%"
            rows.append(f"| {layer} | {alone[layer]:.4f} | {'' if k is None else k + 1} | {after} | {closed} |")
        head = (
            f"All layers sliding: loss {self.all_sliding_loss:.4f}; full attention: {self.full_attention_loss:.4f}; "
            f"the {len(self.chosen)} chosen layers full: {self.final_loss:.4f} "
            f"({100 * self.recovered(self.final_loss):.0f}% of the gap closed; "
            f"{self.samples} samples, {self.supervised_tokens} supervised tokens; "
            f"{'greedy' if self.greedy else 'one round, ranked'})."
        )
        return head + "\n\n" + "\n".join(rows)


def _supervised(sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.as_tensor(sample["input_ids"], dtype=torch.long)
    mask = torch.as_tensor(sample["completion_mask"], dtype=torch.bool)
    if ids.shape != mask.shape or ids.ndim != 1:
        raise ValueError(f"input_ids and completion_mask must be 1-D of one length, got {ids.shape} and {mask.shape}")
    return ids, mask


@torch.no_grad()
def answer_loss(model, samples: list[dict], fa_decode: bool = False) -> tuple[float, int]:
    """(mean negative log-likelihood per supervised token, supervised tokens) of `samples`
    (input_ids + completion_mask, as `data.build_sft_dataset` makes them), one forward each.

    Only the logits of the supervised positions are computed (`logits_to_keep`), so a
    long prompt costs no vocabulary-sized activations. With `fa_decode` the supervised tokens
    attend to the whole sample, as in training with FA decode.
    """
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for sample in samples:
        ids, mask = _supervised(sample)
        targets = mask[1:].nonzero().flatten()  # position p predicts token p + 1
        if targets.numel() == 0:
            continue
        kwargs = {"logits_to_keep": targets.to(device)}
        if fa_decode:
            first = int(mask.nonzero()[0])
            kwargs[FULL_FROM_KEY] = torch.tensor([first], dtype=torch.int32, device=device)
        logits = model(input_ids=ids[None].to(device), **kwargs).logits[0].float()
        labels = ids[targets + 1].to(device)
        total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        count += targets.numel()
    if count == 0:
        raise ValueError("no sample has supervised tokens to score (completion_mask is all 0)")
    return total / count, count


def probe_full_layers(
    model,
    samples: list[dict],
    swaa: SWAAConfig,
    budget: int,
    candidates: list[int] | None = None,
    fa_decode: bool | None = None,
    greedy: bool = True,
) -> ProbeResult:
    """Choose `budget` layers to keep at full attention under `swaa`'s window and sinks (its
    non_sliding_layers are ignored: the probe starts from every layer sliding). FA decode as in
    `swaa` unless `fa_decode` says otherwise. The model's SWAA settings are restored after.

    greedy: `budget` rounds, each adding the layer that lowers the loss most given those already
    chosen (L + (L-1) + ... forwards per sample for L candidates); else one round of L forwards,
    keeping the `budget` layers whose full attention alone lowers it most (cheaper for deep
    models, blind to layers that help only together)."""
    text_config = model.config.get_text_config()
    num_layers = text_config.num_hidden_layers
    if swaa.sliding_window_size is None:
        raise ValueError("swaa.sliding_window_size is null (full attention): there is nothing to probe")
    candidates = list(range(num_layers)) if candidates is None else sorted(set(candidates))
    bad = [c for c in candidates if not 0 <= c < num_layers]
    if bad:
        raise ValueError(f"candidate layers {bad} are not layers of this {num_layers}-layer model")
    if not 1 <= budget <= len(candidates):
        raise ValueError(f"budget must be between 1 and the {len(candidates)} candidate layers, got {budget}")
    if not samples:
        raise ValueError("no samples to probe with")
    fa = bool(swaa.force_fa_decode) if fa_decode is None else fa_decode
    sliding = dataclasses.replace(swaa, non_sliding_layers=[], force_fa_decode=fa)
    previous = getattr(text_config, "swaa_config", None)
    was_training = model.training
    model.eval()
    try:

        def loss_of(config: SWAAConfig) -> tuple[float, int]:
            apply_swaa(model, config)
            return answer_loss(model, samples, fa_decode=fa)

        all_sliding, tokens = loss_of(sliding)
        full, _ = loss_of(SWAAConfig())
        result = ProbeResult(
            sliding.to_dict(), [], all_sliding, full, samples=len(samples), supervised_tokens=tokens, greedy=greedy
        )
        logger.info("Probe: all sliding %.4f, full attention %.4f (%d supervised tokens)", all_sliding, full, tokens)
        for round_index in range(budget if greedy else 1):
            losses = {}
            for layer in (c for c in candidates if c not in result.chosen):
                losses[layer], _ = loss_of(dataclasses.replace(sliding, non_sliding_layers=[*result.chosen, layer]))
            ranked = sorted(losses, key=lambda layer: (losses[layer], layer))
            result.chosen += ranked[:1] if greedy else ranked[:budget]
            result.rounds.append(losses)
            logger.info("Probe round %d: layers %s, loss %.4f", round_index + 1, result.chosen, losses[ranked[0]])
        if greedy:
            result.final_loss = result.loss_after(budget - 1)
        else:
            result.final_loss, _ = loss_of(dataclasses.replace(sliding, non_sliding_layers=result.chosen))
    finally:
        if previous is not None:
            apply_swaa(model, SWAAConfig.from_dict(previous))
        model.train(was_training)
    return result


def write_probe(result: ProbeResult, path: str | Path) -> Path:
    """The result as JSON (written whole, then renamed: no half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    tmp.replace(path)
    return path


def probe_recipe(
    recipe, samples: int = 16, budget: int | None = None, device: str | None = None, greedy: bool = True
) -> ProbeResult:
    """`probe_full_layers` on a recipe's model and data: the first `samples` rows of data.eval_path
    (else of the training data), tokenized and filtered as training does; the recipe's window,
    sinks and FA decode; `budget` layers (default: as many as swaa.non_sliding_layers lists, at
    least 1). On the GPU when there is one."""
    from .data import build_sft_dataset, load_rows
    from .model import load_config, load_model, load_tokenizer
    from .run import load_training_rows, sample_length_limit, set_chat_template

    data = recipe.data
    tokenizer = load_tokenizer(recipe.model)
    set_chat_template(tokenizer, data, recipe.training)
    config = load_config(recipe.model)
    max_length, max_length_name = sample_length_limit(recipe, config)
    source = data.eval_path or data.path
    try:
        rows = load_rows(data.eval_path, split=data.eval_split) if data.eval_path else load_training_rows(data)
        encoded = build_sft_dataset(
            rows,
            tokenizer,
            format=data.format,
            min_length=data.min_length,
            max_length=max_length,
            judge_filter=data.judge_filter,
            system_prompt=data.system_prompt,
            max_samples=samples,
            max_length_name=max_length_name,
        )
    except ValueError as err:
        raise ValueError(err if str(source) in str(err) else f"{source}: {err}") from None
    model = load_model(recipe.model, recipe.swaa, config=config)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    num_layers = model.config.get_text_config().num_hidden_layers
    budget = budget or max(1, len([i for i in recipe.swaa.non_sliding_layers if i < num_layers]))
    logger.info("Probing %d of %d layers on %d samples of %s", budget, num_layers, len(encoded), source)
    return probe_full_layers(model, list(encoded), recipe.swaa, budget, greedy=greedy)
