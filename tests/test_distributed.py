"""Multi-process training through accelerate, on CPU over gloo.

- every config in recipes/accelerate/ goes through accelerate's own launcher validation and
  names the engine its file name claims;
- the demo recipe under DDP (2 processes) reaches the same losses as one process with the
  same global batch, and writes a PEFT adapter + swaa_config.json that loads on CPU;
- DeepSpeed Ulysses sequence parallelism (2 processes; deepspeed comes with the `deepspeed`
  extra CI installs): each rank holds half of a packed row, the SWAA attention still sees
  the whole row, and the logits, the loss and every gradient (summed over the ranks) equal
  those of the whole row on one process, also for a row padded to a multiple of the SP size.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "recipes" / "accelerate"

# A few seconds of training per process: 4 optimizer steps on 1-2 packed rows of <= 1024 tokens.
TINY = [
    "training.max_steps=4",
    "training.logging_steps=1",
    "training.save_steps=4",
    "data.synthetic_rows=16",
    "data.synthetic_words=[80,160]",
    "training.max_length=1024",
    "swaa.sliding_window_size=32",
]
# fp32 on CPU: the two runs differ only in reduction order (DDP sums two per-rank gradients,
# one process backpropagates one longer row), ~1e-6 on the loss after 4 Adam steps. A wrong
# global batch or a per-rank (not per-token) loss average moves the first loss by > 1e-3.
LOSS_ATOL = 1e-4


# ------------------------------------------------------------------------------------------
# The accelerate config files
# ------------------------------------------------------------------------------------------
def _launch_args(name: str):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    # As `accelerate launch` does before handing over to its DeepSpeed launcher.
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    return args


def _launch_env(args) -> dict:
    """The environment `accelerate launch` gives the training processes."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    return prepare_deepspeed_cmd_env(args)[1] if args.use_deepspeed else prepare_multi_gpu_env(args)


EXPECTED_ENV = {
    "ddp": {"ACCELERATE_MIXED_PRECISION": "bf16"},
    "fsdp2": {
        "ACCELERATE_USE_FSDP": "true",
        "FSDP_VERSION": "2",
        "FSDP_RESHARD_AFTER_FORWARD": "true",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
        "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
        "FSDP_ACTIVATION_CHECKPOINTING": "false",
    },
    "zero2": {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2",
        "ACCELERATE_MIXED_PRECISION": "bf16",
    },
    "zero3": {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
        "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true",
        "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none",
    },
    "zero3_offload": {
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
        "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "cpu",
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu",
        "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true",
    },
    "sp": {
        "ACCELERATE_USE_DEEPSPEED": "true",
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
        "ACCELERATE_USE_PARALLELISM_CONFIG": "true",
        "PARALLELISM_CONFIG_SP_SIZE": "2",
        "PARALLELISM_CONFIG_SP_BACKEND": "deepspeed",
    },
}
ENGINE = {
    "ddp": "multi_gpu",
    "fsdp2": "use_fsdp",
    "zero2": "use_deepspeed",
    "zero3": "use_deepspeed",
    "zero3_offload": "use_deepspeed",
    "sp": "use_deepspeed",
}


def test_every_config_file_is_checked():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED_ENV)


@pytest.mark.parametrize("name", sorted(EXPECTED_ENV))
def test_accelerate_config_names_its_engine(name):
    args = _launch_args(name)
    engines = {flag for flag in set(ENGINE.values()) if getattr(args, flag)}
    assert engines == {ENGINE[name]}
    assert args.num_processes == 2 and args.num_machines == 1
    env = _launch_env(args)
    assert {key: env.get(key) for key in EXPECTED_ENV[name]} == EXPECTED_ENV[name]


# ------------------------------------------------------------------------------------------
# DDP over gloo: the same losses as one process with the same global batch
# ------------------------------------------------------------------------------------------
def _logged_losses(output_dir: Path, steps: int) -> list[float]:
    state = json.loads((output_dir / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path):
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    # `accelerate launch --cpu` runs a single process (multi-CPU needs mpirun), so launch
    # through torchrun with the DDP config; `training.use_cpu` makes accelerate pick gloo.
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / "ddp.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(_free_port()),
        "train.py",
        "--recipe",
        "demo",
        *TINY,
        "training.use_cpu=true",
        f"training.output_dir={ddp_dir}",
    ]
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # Two processes trained: each saved its own RNG state (one process writes rng_state.pth).
    assert sorted(p.name for p in (ddp_dir / "checkpoint-4").glob("rng_state*")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]

    from swaa_train.run import run_training

    # One process, the same global batch: 2 packed rows per step.
    run_training("demo", [*TINY, "training.per_device_train_batch_size=2", f"training.output_dir={one_dir}"])

    ddp_losses, one_losses = _logged_losses(ddp_dir, 4), _logged_losses(one_dir, 4)
    assert len(ddp_losses) == 4
    assert ddp_losses == pytest.approx(one_losses, abs=LOSS_ATOL)
    assert ddp_losses[-1] < ddp_losses[0]  # it trains

    # The gathered output: a plain PEFT adapter + swaa_config.json, loadable on CPU.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from swaa_train.swaa_config import SWAAConfig

    assert SWAAConfig.load(ddp_dir) == SWAAConfig.load(one_dir)
    base = AutoModelForCausalLM.from_pretrained(ddp_dir / "base-model", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, ddp_dir)
    lora = {k: v for k, v in model.state_dict().items() if "lora_B" in k}
    assert lora and all(v.abs().sum() > 0 for v in lora.values())  # trained (lora_B starts at zero)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------
# DeepSpeed Ulysses SP: half a row per rank, the whole row in the attention
# ------------------------------------------------------------------------------------------
# (length, prompt length) of each packed document, per row: 128 tokens, and 127 tokens that
# cannot be cut in 2 and that the collator pads to 128 (pad_to_multiple_of=4). (Over gloo the
# SP ranks' rows of one step must have the same length; NCCL takes any.)
SP_ROWS = [[(40, 25), (70, 50), (18, 11)], [(39, 25), (70, 50), (18, 11)]]


def _packed_batch(seed: int) -> dict:
    """A padding-free row of 3 documents through TRL's collator and ours (SP layout)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from swaa_train.trainer import FullFromCollator

    g = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    docs = SP_ROWS[seed]
    for length, prompt in docs:
        doc = torch.randint(3, 97, (length,), generator=g).tolist()
        ids += doc
        labels += [-100] * prompt + doc[prompt:]  # supervised answer after the prompt
    example = {"input_ids": ids, "labels": labels, "seq_lengths": [n for n, _ in docs]}
    trl = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, pad_to_multiple_of=4)
    return FullFromCollator(trl, per_document_as_lists=True)([example])


def _sp_worker(rank: int, world: int, port: int, out_dir: str):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    import deepspeed
    from conftest import tiny_model
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF, UlyssesSPDataLoaderAdapter

    from swaa_train.attention import ATTN_IMPLEMENTATION, apply_swaa
    from swaa_train.swaa_config import SWAAConfig
    from swaa_train.trainer import per_document_tensors

    deepspeed.init_distributed(dist_backend="gloo")
    swaa = SWAAConfig(sliding_window_size=8, keep_first=2, force_fa_decode=True, non_sliding_layers=[1])
    model = apply_swaa(tiny_model("qwen3", attn_implementation="sdpa").float(), swaa)  # 4 heads, 2 kv heads
    batches = [_packed_batch(seed) for seed in range(world)]  # rank r's data loader yields batch r

    def forward(batch):
        inputs = per_document_tensors({k: v for k, v in batch.items() if k not in ("labels", "shift_labels")}, "cpu")
        with torch.no_grad():
            return model(**inputs).logits

    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(batch, shift_labels):
        """Summed next-token NLL over the supervised tokens, and its gradient for every weight."""
        inputs = per_document_tensors({k: v for k, v in batch.items() if k not in ("labels", "shift_labels")}, "cpu")
        logits = model(**inputs).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), shift_labels.flatten(), ignore_index=-100, reduction="sum"
        )
        return loss.detach(), torch.autograd.grad(loss, params)

    whole = [forward(b) for b in batches]  # before SP: one process, whole rows
    whole_grads = []
    for b in batches:  # the shift Ulysses' data loader applies: the last position predicts nothing
        shift = torch.nn.functional.pad(b["labels"], (0, 1), value=-100)[..., 1:]
        whole_grads.append(loss_and_grads(b, shift))
    mpu = UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=model,
        core_attn_implementation=ATTN_IMPLEMENTATION,
        sequence_parallel_size=world,
        micro_batch_size=1,
        seq_length_is_variable=True,
    )
    loader = UlyssesSPDataLoaderAdapter(
        iter([batches[rank]]),
        sp_rank=rank,
        sp_group=mpu.get_sequence_parallel_group(),
        sp_world_size=world,
        device="cpu",
    )
    seen = []
    for step in range(world):  # step s: every rank holds its slice of rank s's row
        shard = next(loader)
        seen.append({k: shard[k] for k in ("cu_seq_lens_q", "swaa_full_from", "max_length_q")})
        local = forward(shard)
        chunk = whole[step].shape[1] // world
        torch.testing.assert_close(local, whole[step][:, rank * chunk : (rank + 1) * chunk], atol=2e-5, rtol=1e-4)
        # Each rank's loss covers its slice; the gradients flow back through the all-to-alls, so
        # summed over the ranks (as ZeRO reduces them) they are the whole row's.
        loss, grads = loss_and_grads(shard, shard["shift_labels"])
        torch.distributed.all_reduce(loss)
        for grad in grads:
            torch.distributed.all_reduce(grad)
        expected_loss, expected_grads = whole_grads[step]
        torch.testing.assert_close(loss, expected_loss, atol=1e-4, rtol=1e-5)
        for grad, expected in zip(grads, expected_grads):
            torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)
        seen[-1]["loss"] = loss.item()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(seen))


@pytest.mark.slow
def test_ulysses_sequence_parallel_sees_whole_rows(tmp_path):
    pytest.importorskip("deepspeed")
    import torch.multiprocessing as mp

    sys.path.insert(0, str(Path(__file__).parent))  # for `conftest` in the spawned workers
    mp.spawn(_sp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    expected = []
    for seed in range(2):
        batch = _packed_batch(seed)
        expected.append({k: batch[k] for k in ("cu_seq_lens_q", "swaa_full_from", "max_length_q")})
    # Both ranks received every row's per-document fields whole, not sliced, and the same loss.
    seen = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [step.pop("loss") for step in seen[0]] == [step.pop("loss") for step in seen[1]]
    assert seen == [expected, expected]
    assert expected[0]["cu_seq_lens_q"] == [0, 40, 110, 128]
    assert expected[0]["swaa_full_from"] == [25, 50, 11]
    # The second row is padded to 128 (a multiple of the SP size): the padding token forms its
    # own 1-token document, without supervised tokens.
    assert expected[1]["cu_seq_lens_q"] == [0, 39, 109, 127, 128]
    assert expected[1]["swaa_full_from"] == [25, 50, 11, 1]


# ------------------------------------------------------------------------------------------
# benchmarks/bench_multi_gpu.py: the per-GPU figures of BENCHMARKS.md "Multi-GPU"
# ------------------------------------------------------------------------------------------
def _bench_module():
    import benchmarks.bench_multi_gpu

    return benchmarks.bench_multi_gpu


def _rank(tmp_path, name, rank, *, world, sp, seconds, tokens, losses=(2.0, 1.5)):
    record = {
        "rank": rank,
        "world": world,
        "sp": sp,
        "engine": "x",
        "output_dir": str(tmp_path / name),
        "step_seconds": seconds,
        "batch_tokens": tokens,
        "peak_allocated_gib": 1.0 + rank,
        "peak_reserved_gib": 2.0,
        "log": [{"loss": v, "grad_norm": 3.0} for v in losses],
    }
    (tmp_path / f"{name}.json.rank{rank}").write_text(json.dumps(record))
    return str(tmp_path / f"{name}.json")


def test_multi_gpu_table_per_gpu_figures(tmp_path):
    bench = _bench_module()
    # Data parallel: each rank's own tokens over its steps 2..N (step 1 compiles), averaged over ranks.
    ddp = _rank(tmp_path, "ddp", 0, world=2, sp=1, seconds=[9.0, 1.0, 1.0], tokens=[5, 100, 300, 7])
    _rank(tmp_path, "ddp", 1, world=2, sp=1, seconds=[9.0, 1.0, 1.0], tokens=[5, 200, 200, 7])
    # Sequence parallel: step s trains the row of rank s % sp, spread over sp GPUs.
    sp_a = _rank(tmp_path, "sp_a", 0, world=2, sp=2, seconds=[9.0, 2.0, 2.0], tokens=[400, 800])
    _rank(tmp_path, "sp_a", 1, world=2, sp=2, seconds=[9.0, 2.0, 2.0], tokens=[600, 1000])
    sp_b = _rank(tmp_path, "sp_b", 0, world=2, sp=2, seconds=[9.0, 4.0], tokens=[10, 20])
    _rank(tmp_path, "sp_b", 1, world=2, sp=2, seconds=[9.0, 4.0], tokens=[32, 40])
    rows = {
        line.split(" | ")[0].strip("| "): line.split(" | ") for line in bench.table([ddp, sp_a, sp_b]).splitlines()[2:]
    }
    assert float(rows["ddp"][4]) == 200.0  # rank 0: 400 / 2 s, rank 1: 400 / 2 s
    assert float(rows["sp_a"][4]) == (600 + 800) / 4.0 / 2  # steps 2, 3: rank 1's 1st row, rank 0's 2nd
    assert float(rows["sp_b"][4]) == 32 / 4.0 / 2  # one row per length, never merged
    assert rows["ddp"][5] == "1.0 / 2.0" and rows["ddp"][7] == "2.0000 1.5000"
