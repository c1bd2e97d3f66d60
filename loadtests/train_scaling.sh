#!/bin/bash
# Training steps per second on one and on two processes (docs/training.md, "Several processes"): the digits CNN's
# distilled student, 200 steps of batch 64 per process (builder/pipeline/sources/digits_steps.yaml). One process with torch's
# default threads, one with OMP_NUM_THREADS=1, two under DeepSpeed's launcher (one thread each); ROUNDS times,
# interleaved. Each build's summary line `...: distillation: N process(es) ... steps/s` is the figure.
#   usage: loadtests/train_scaling.sh [artifacts folder, default /tmp/kit/scaling] [rounds, default 2]
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:-/tmp/kit/scaling}
ROUNDS=${2:-2}
PY=${PYTHON:-python}
DS=${DEEPSPEED:-deepspeed}
export PYTHONPATH=$PWD
B=(--config builder/pipeline/sources/digits_steps.yaml --artifacts "$A/art" --repository "$A/repo" --force)
grep -o -w 'avx512_vnni\|avx512f\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' '; echo "($(nproc) cores)"
"$PY" -m builder build "${B[@]}" --variant fp32 > /dev/null
for round in $(seq "$ROUNDS"); do
  echo "== round $round: 1 process, default threads"
  "$PY" -m builder build "${B[@]}" --variant distilled 2>&1 | grep ": distillation: "
  echo "== round $round: 1 process, OMP_NUM_THREADS=1"
  OMP_NUM_THREADS=1 "$PY" -m builder build "${B[@]}" --variant distilled 2>&1 | grep ": distillation: "
  echo "== round $round: 2 processes"
  "$DS" --num_gpus 2 --module builder build "${B[@]}" --variant distilled 2>&1 | grep ": distillation: "
done
uptime
