#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16x_call2.sh — what h16x's first call left open (not run by h16x: its
# device calls were spent; ~150 s warm on one H200, more on two GPUs):
#  1. one GPU, two processes: does a process's batch of copies wait for the
#     other process's copies (the GPU switching between their contexts)?
#     staging_bench's gathers alone, then with a second process scattering
#     between them (--gap: each sleeps between batches, as a one-thread
#     end-to-end run does), p50 / p99 of a batch;
#  2. tests/gpu/run.sh with FERRY_STAGING_SCATTER_RETIRE_US=300 (the
#     candidate default) in every process;
#  3. item 3: four submitting threads, defaults (D) and the candidate (K);
#  4. the candidate against the defaults, alternated (D K D K), READ 128 and
#     1,024, one thread, on two GPUs where the host has them (TGPU=1).
#   BUILD=build-h16x [DRY=1] bash <bundle>/bench/calls/gpu_h16x_call2.sh
# DRY=1 prints the steps instead of running them (no GPU needed).
set -uo pipefail
B=${BUILD:-build-gpu}
export BUILD=$B
here=$(cd "$(dirname "$0")/.." && pwd)   # bench/ (this script lies in bench/calls/)
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
OUT=${OUT:-/tmp/ferry-h16x}
mkdir -p "$OUT"
DRY=${DRY:-0}
K="FERRY_STAGING_SCATTER_RETIRE_US=300"
step() {  # label, then the command
  echo "== $(date -u +%T) $1"
  shift
  if [ "$DRY" = 1 ]; then
    echo "   $*"
    return 0
  fi
  "$@"
}
cost() {  # label, then env assignments for gpu_cost.sh
  local label=$1
  shift
  step "$label" timeout -k 5 60 env IDLE=0 "$@" bash "$here/gpu_cost.sh"
}
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
tgpu=0
[ "$ngpu" -ge 2 ] && tgpu=1
echo "== $(date -u +%T) start; $ngpu GPU(s), target on cuda:$tgpu; cpus $(nproc)"
step "gathers alone (--gap=400)" timeout -k 5 20 "$B/staging_bench" --gap=400 --op=gather cuda:0 1 16384
probe_pair() {  # gathers while a second process scatters on the same GPU
  timeout -k 5 20 "$B/staging_bench" --gap=400 --op=scatter cuda:0 3 16384 >"$OUT/scatter_side.txt" 2>&1 &
  local side=$!
  sleep 1
  timeout -k 5 20 "$B/staging_bench" --gap=400 --op=gather cuda:0 1 16384
  wait "$side"
  tail -1 "$OUT/scatter_side.txt"
}
step "gathers with a second process scattering on cuda:0" probe_pair
step "tests/gpu/run.sh with $K" timeout -k 5 200 env "$K" OUT="$OUT/gpu" BUILD="$B" bash tests/gpu/run.sh
echo "run.sh rc $?"
cost "item 3, four threads, D" TGPU=$tgpu MEMS=cuda0 THREADS=4 SECS=1
cost "item 3, four threads, K" TGPU=$tgpu MEMS=cuda0 THREADS=4 SECS=1 CELL_ENV="$K"
for r in 1 2; do
  cost "round $r D" TGPU=$tgpu MEMS=cuda0 OPS=read THREADS=1 SECS=2
  cost "round $r K" TGPU=$tgpu MEMS=cuda0 OPS=read THREADS=1 SECS=2 CELL_ENV="$K"
done
echo "== $(date -u +%T) done"
