#!/usr/bin/env bash
# The multi-GPU benchmark of BENCHMARKS.md ("Multi-GPU"), on a machine with 2 GPUs:
#   bash benchmarks/bench_multi_gpu.sh OUT_DIR
# 1. a random-init Qwen3-4B-shaped base (saved once, so every engine starts from the same weights);
# 2. the qwen3_swa2k recipe for 5 steps on the same synthetic data: 1 GPU with 2 rows per step,
#    then DDP, FSDP2, ZeRO-2 and ZeRO-3 on 2 GPUs with 1 row per GPU (the same global batch);
# 3. every adapter reloaded on one GPU; 4. Ulysses SP on 2 GPUs at growing lengths, until
#    one fails or the time budget (BUDGET_S, default 330 s since the start) runs out.
set -uo pipefail
out=${1:?usage: bench_multi_gpu.sh OUT_DIR}
base=${BASE:-/tmp/qwen3-4b-random}
runs=${RUNS:-/tmp/swaa-bench}
mkdir -p "$out" "$runs"
bench=(python3 benchmarks/bench_multi_gpu.py)
[ -f "$base/tokenizer_config.json" ] || { rm -rf "$base"; "${bench[@]}" make-base "$base" || exit 1; }  # a complete base only
common=(model.name_or_path=$base data.path=synthetic data.synthetic_rows=48 "data.synthetic_words=[1500,3000]"
  data.min_length=0 data.max_length=null training.max_length=8192 training.max_steps=5 training.logging_steps=1
  training.save_steps=5 training.learning_rate=1e-3 training.lr_scheduler_type=constant training.warmup_steps=0
  training.per_device_train_batch_size=1 training.gradient_accumulation_steps=1 training.dataloader_num_workers=0)
# The engines alone: the recipe's memory techniques (activation offloading, Liger) off.
common+=(memory.liger_kernel=false
  memory.activation_offloading=false)

run() {  # run NAME LAUNCHER...: one training run, its log and per-rank JSON under $out
  local name=$1; shift
  echo "== $name ($SECONDS s)"
  timeout 300 "$@" benchmarks/bench_multi_gpu.py train --recipe qwen3_swa2k --json "$out/$name.json" \
    "${common[@]}" training.output_dir=$runs/$name "${extra[@]}" > "$out/$name.log" 2>&1
  local rc=$?
  echo "rc=$rc"; grep -E "Error|error:" "$out/$name.log" | tail -3
  return $rc
}

extra=(training.per_device_train_batch_size=2)
run 1gpu env CUDA_VISIBLE_DEVICES=0 python3
extra=()
for engine in ddp fsdp2 zero2 zero3; do
  run $engine python3 -m accelerate.commands.launch --config_file recipes/accelerate/$engine.yaml
done
"${bench[@]}" table "$out"/{1gpu,ddp,fsdp2,zero2,zero3}.json | tee "$out/engines.md"
CUDA_VISIBLE_DEVICES=0 "${bench[@]}" reload "$base" "$out"/{1gpu,ddp,fsdp2,zero2,zero3}.json | tee "$out/reload.md"

for T in 131072 262144 524288; do
  [ $SECONDS -lt ${BUDGET_S:-330} ] || { echo "time budget spent before T=$T"; break; }
  words=$((T * 80 / 100))  # ~1.17 tokens a word: one document of ~0.94 T tokens per row
  extra=(data.synthetic_rows=4 "data.synthetic_words=[$words,$words]" training.max_length=$T training.max_steps=2
    training.save_steps=2 training.pad_to_multiple_of=2)
  run sp_$T python3 -m accelerate.commands.launch --config_file recipes/accelerate/sp.yaml || break
done
sp_runs=$(ls "$out"/sp_*.json.rank0 2>/dev/null | sed 's/\.rank0$//')  # one row per length that ran
[ -n "$sp_runs" ] && "${bench[@]}" table $sp_runs | tee "$out/sp.md"
