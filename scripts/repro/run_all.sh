#!/usr/bin/env bash
# Every stage of the adaptation experiment back to back, as run on one H100 for docs/adaptation.md:
#   bash scripts/repro/run_all.sh            # writes outputs/repro/, copies the results to $OUT if set
# Defaults fit one 600-s call (measured: stages after pretraining take ~270 s on an H100).
# PRETRAIN_S and LORA_S bound pretraining and LoRA training (wall-clock seconds); DEADLINE_S
# (seconds from the start) shortens LoRA training so the evaluations still fit in it.
set -euo pipefail
export PYTHONPATH=".:kernels${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PRETRAIN_S=${PRETRAIN_S:-230} LORA_S=${LORA_S:-60} DEADLINE_S=${DEADLINE_S:-565} EVAL_RESERVE_S=${EVAL_RESERVE_S:-170}
R=outputs/repro  # scripts/repro/lora.yaml reads the model and data from here
start=$(date +%s)
stage() { echo "=== $1 at +$(( $(date +%s) - start ))s"; }
save() { [ -n "${OUT:-}" ] && cp "$@" "$OUT/" 2>/dev/null || true; }

stage data
python3 scripts/repro/data.py --out $R/data
stage pretrain
python3 scripts/repro/pretrain.py --data_dir $R/data --out_dir $R/base --time_budget_s "$PRETRAIN_S"
save $R/base/pretrain_log.jsonl
left=$(( DEADLINE_S - ($(date +%s) - start) - EVAL_RESERVE_S ))
lora=$(( left < LORA_S ? left : LORA_S )); lora=$(( lora < 20 ? 20 : lora ))
stage "adapt (LoRA budget ${lora}s)"
python3 scripts/repro/adapt.py --recipe scripts/repro/lora.yaml --eval-data $R/data/eval.parquet \
  --out $R/results --lora-time-budget "$lora" --num-proc 16 --batch-size 50 || echo "adapt stage failed: reporting what exists"
stage report
python3 scripts/repro/report.py --results $R/results --eval-data $R/data/eval.parquet --model $R/base \
  --plot $R/results/adaptation.png --title "Qwen3-arch 25M, pretrained from scratch; eval prompts 2k-16k tokens"
[ -n "${OUT:-}" ] && { cp $R/results/eval_base/samples.jsonl "$OUT/samples_base.jsonl"; \
  cp $R/results/eval_adapter/samples.jsonl "$OUT/samples_adapter.jsonl"; } || true
save $R/results/results.json $R/results/table.md $R/results/adaptation.png
stage done
