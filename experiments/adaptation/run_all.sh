#!/usr/bin/env bash
# The stages of the adaptation experiment back to back, as run on one H100 for docs/adaptation.md.
# In one 600-s GPU job (pretraining 300 s, LoRA 60 s; 532 s on an H100 for docs/adaptation.md):
#   bash experiments/adaptation/run_all.sh
# or in two 600-s GPU jobs, the first one all pretraining (PRETRAIN_S 480):
#   STAGES=pretrain bash experiments/adaptation/run_all.sh             # data, pretraining, then the base packed
#                                                             # as $R/chunks/base.tar.NN (<= 15 MiB) + base.tar.json
#   STAGES=adapt BASE_CHUNKS=DIR bash experiments/adaptation/run_all.sh  # data again (deterministic), the base
#                                                             # unpacked from DIR, adapt + report (LORA_S 180)
# Outputs go to outputs/repro/ ($R); with OUT set, the chunks + pretrain_log.jsonl (pretrain) or the
# results (adapt, all) are copied there. PRETRAIN_S and LORA_S bound pretraining and LoRA training
# (wall-clock seconds); DEADLINE_S (seconds from the start) shortens LoRA training so the
# evaluations (EVAL_RESERVE_S, ~110 s for 100 eval questions on an H100) still fit in it. DATA_ARGS,
# PRETRAIN_ARGS and ADAPT_ARGS are appended to those stages' command lines (a tiny run on CPU, for one).
set -euo pipefail
export PYTHONPATH=".:kernels${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
STAGES=${STAGES:-all}
case $STAGES in
  all) PRETRAIN_S=${PRETRAIN_S:-300} LORA_S=${LORA_S:-60} ;;
  pretrain) PRETRAIN_S=${PRETRAIN_S:-480} ;;
  adapt) LORA_S=${LORA_S:-180} BASE_CHUNKS=${BASE_CHUNKS:?STAGES=adapt needs BASE_CHUNKS, the directory of base.tar.*} ;;
  *) echo "STAGES must be all, pretrain or adapt, not '$STAGES'" >&2; exit 2 ;;
esac
DEADLINE_S=${DEADLINE_S:-540} EVAL_RESERVE_S=${EVAL_RESERVE_S:-110}
DATA_ARGS=${DATA_ARGS:---eval-rows 100}  # 100 held-out questions: ~65 s for the 10 evaluations
R=outputs/repro  # experiments/adaptation/lora.yaml reads the model and data from here
start=$(date +%s)
stage() { echo "=== $1 at +$(( $(date +%s) - start ))s"; }
save() { [ -n "${OUT:-}" ] && cp "$@" "$OUT/" 2>/dev/null || true; }

stage data
python3 -m experiments.adaptation.make_data --out $R/data ${DATA_ARGS:-}
if [ "$STAGES" = adapt ]; then
  stage "unpack the base from $BASE_CHUNKS"
  rm -rf $R/base
  python3 -m experiments.adaptation.base_chunks unpack --chunks "$BASE_CHUNKS" --base $R/base
else
  stage pretrain
  python3 -m experiments.adaptation.run_pretrain --data_dir $R/data --out_dir $R/base --time_budget_s "$PRETRAIN_S" ${PRETRAIN_ARGS:-}
  save $R/base/pretrain_log.jsonl
fi
if [ "$STAGES" = pretrain ]; then
  stage pack
  rm -rf $R/chunks
  python3 -m experiments.adaptation.base_chunks pack --base $R/base --chunks $R/chunks
  save $R/chunks/*
  stage done
  exit 0
fi
left=$(( DEADLINE_S - ($(date +%s) - start) - EVAL_RESERVE_S ))
lora=$(( left < LORA_S ? left : LORA_S )); lora=$(( lora < 20 ? 20 : lora ))
stage "adapt (LoRA budget ${lora}s)"
python3 -m experiments.adaptation.run_adapt --recipe experiments/adaptation/lora.yaml --eval-data $R/data/eval.parquet \
  --out $R/results --lora-time-budget "$lora" --num-proc 16 --batch-size 50 ${ADAPT_ARGS:-} || echo "adapt stage failed: reporting what exists"
stage report
python3 -m experiments.adaptation.run_report --results $R/results --eval-data $R/data/eval.parquet --model $R/base \
  --plot $R/results/adaptation.png --title "Qwen3-arch 26M, pretrained from scratch; eval prompts 2k-16k tokens"
[ -n "${OUT:-}" ] && { cp $R/results/eval_base/samples.jsonl "$OUT/samples_base.jsonl"; \
  cp $R/results/eval_adapter/samples.jsonl "$OUT/samples_adapter.jsonl"; } || true
save $R/results/results.json $R/results/table.md $R/results/adaptation.png
[ "$STAGES" = adapt ] && save $R/base/pretrain_log.jsonl
stage done
