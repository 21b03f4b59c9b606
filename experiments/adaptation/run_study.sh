#!/usr/bin/env bash
# One job of the multi-seed adaptation study (experiments/adaptation/study.py) on a GPU machine:
#   python -m experiments.adaptation.run_study plan      # the jobs: s0-0 (pretraining + base ladder), s0-1, ...
#   bash experiments/adaptation/run_study.sh s0-0
# A job skips the tasks whose rows it already has, so one cut short can simply be run again. The
# jobs of a seed after its first need that seed's base: outputs/adaptation/seed$N/base, or its
# chunks in outputs/adaptation/seed$N/chunks (the first job writes them; with OUT set they are
# copied out). STUDY names the study YAML (default experiments/adaptation/study.yaml). With OUT
# set, the job's results are copied under $OUT laid out as under outputs/adaptation/, so copying
# $OUT/* there on the next machine (or on the one that writes the report) carries on.
set -euo pipefail
JOB=${1:?usage: run_study.sh JOB  (the jobs: python -m experiments.adaptation.run_study plan)}
export PYTHONPATH=".:kernels${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
STUDY=${STUDY:-experiments/adaptation/study.yaml}
start=$(date +%s)
status=0
python3 -m experiments.adaptation.run_study job "$JOB" --study "$STUDY" || status=$?
if [ -n "${OUT:-}" ]; then
  python3 -m experiments.adaptation.run_study collect "$JOB" --study "$STUDY" --to "$OUT"
fi
echo "=== job $JOB: exit $status after $(( $(date +%s) - start )) s"
exit $status
