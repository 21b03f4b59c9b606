#!/usr/bin/env bash
# Every seed of the multi-seed study side by side on one GPU (experiments/adaptation/study.py,
# run_parallel): one process per lane, each starting no task it could not end before the deadline.
#   bash experiments/adaptation/run_parallel.sh pretrain,base_ladder 540        # bases + their ladder
#   LANES=2 bash experiments/adaptation/run_parallel.sh base_kv,arm:fa_decode,arm:no_fa 540
# A rerun skips the tasks that have rows, so a second call on the same machine carries on.
# With CUDA MPS available the lanes share the GPU through it (MPS=off: plain time-slicing).
# PYTHON names the interpreter (default python3). At most MAX_LANES lanes run at once: by default
# the GPU's memory over LANE_GIB (36: the peak of one lane training a LoRA on 64k-token rows), so 3
# on a 140-GiB H200, where six lanes ran out of memory; the others start as places free up.
# With OUT set, every seed's rows and logs (no weights) are packed into $OUT/study-results.tgz,
# laid out as under outputs/adaptation/.
set -uo pipefail
TASKS=${1:?usage: run_parallel.sh TASKS DEADLINE_S}
DEADLINE_S=${2:?usage: run_parallel.sh TASKS DEADLINE_S}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)   # the checkout: its packages importable from any directory
export PYTHONPATH="$ROOT:$ROOT/kernels${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
STUDY=${STUDY:-experiments/adaptation/study.yaml}
start=$(date +%s)

mps=off
if [ "${MPS:-auto}" != off ] && command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/swaa-mps/pipe CUDA_MPS_LOG_DIRECTORY=/tmp/swaa-mps/log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d 2>/dev/null
  if timeout 60 "$PYTHON" -c "import torch; assert torch.ones(2, device='cuda').sum().item() == 2"; then
    mps=on
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi
echo "=== MPS $mps"

max_lanes=${MAX_LANES:-}
if [ -z "$max_lanes" ] && command -v nvidia-smi >/dev/null; then
  mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
  max_lanes=$(( mib / (${LANE_GIB:-36} * 1024) ))
  [ "$max_lanes" -ge 1 ] || max_lanes=1
fi
echo "=== at most ${max_lanes:-all} lanes at once"

left=$(( DEADLINE_S - ($(date +%s) - start) ))
"$PYTHON" -m experiments.adaptation.run_study parallel --study "$STUDY" --tasks "$TASKS" \
  --lanes-per-seed "${LANES:-1}" --deadline-s "$left" --slowdown "${SLOWDOWN:-1.6}" \
  ${max_lanes:+--max-running "$max_lanes"}
status=$?
[ "$mps" = on ] && echo quit | nvidia-cuda-mps-control
if [ -n "${OUT:-}" ]; then
  "$PYTHON" -m experiments.adaptation.run_study collect-all --study "$STUDY" --to /tmp/study-results >/dev/null
  tar -czf "$OUT/study-results.tgz" -C /tmp/study-results .
fi
echo "=== $TASKS: exit $status after $(( $(date +%s) - start )) s"
exit $status
