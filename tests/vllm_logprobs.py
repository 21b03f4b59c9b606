"""Serve a folder with vLLM (CPU, fp32, greedy, prefill in 256-token chunks) and save the logprobs.

Run by tests/test_vllm.py in the vLLM environment (SWAA_VLLM_PYTHON), where this package is
installed, so vLLM loads its plugin through the entry point:

    python tests/vllm_logprobs.py FOLDER REQUESTS.json OUT.json

REQUESTS.json: {"prompts": [[token ids], ...], "max_tokens": N,
                "prefix_prompts": [[token ids], ...]}. `prompts` are generated with prompt
logprobs; afterwards `prefix_prompts` (which share prefixes with `prompts`) are generated
without them, so they read the prompts' cached blocks (prefix caching is on).
OUT.json: per request its generated ids, their logprobs, the prompt logprobs, and the number
of prompt tokens read from the prefix cache.
"""

from __future__ import annotations

import json
import sys

CHUNK = 256  # max_num_batched_tokens: longer prompts are prefilled in chunks of this many tokens


def logprob_of(entry: dict, token: int) -> float:
    return entry[token].logprob


def describe(output) -> dict:
    completion = output.outputs[0]
    prompt = output.prompt_token_ids
    prompt_logprobs = None
    if output.prompt_logprobs is not None:  # the first prompt token has none
        prompt_logprobs = [logprob_of(entry, token) for entry, token in zip(output.prompt_logprobs[1:], prompt[1:])]
    return {
        "token_ids": list(completion.token_ids),
        "logprobs": [logprob_of(entry, token) for entry, token in zip(completion.logprobs, completion.token_ids)],
        "prompt_logprobs": prompt_logprobs,
        "num_cached_tokens": output.num_cached_tokens or 0,
    }


def main(folder: str, requests_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    requests = json.loads(open(requests_path).read())
    llm = LLM(
        model=folder,
        dtype="float32",
        max_model_len=2048,
        max_num_batched_tokens=CHUNK,
        max_num_seqs=4,
        enable_chunked_prefill=True,
        enable_prefix_caching=True,
        enforce_eager=True,
        seed=0,
    )
    greedy = dict(temperature=0.0, max_tokens=requests["max_tokens"], logprobs=0, ignore_eos=True)
    outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=ids) for ids in requests["prompts"]],
        SamplingParams(**greedy, prompt_logprobs=0),
    )
    prefix_outputs = llm.generate(
        [TokensPrompt(prompt_token_ids=ids) for ids in requests["prefix_prompts"]], SamplingParams(**greedy)
    )
    result = {"prompts": [describe(o) for o in outputs], "prefix_prompts": [describe(o) for o in prefix_outputs]}
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":  # vLLM spawns its engine processes, which re-import this file
    main(*sys.argv[1:])
