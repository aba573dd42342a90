#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16a_call2.sh — issue 16 items 3-4 on one H200 under CUDA MPS (call 1:
# with MPS two processes on cuda:0 measure as on two GPUs), h16a's second
# call: the retire hand-offs of a one-thread staged batch, alternated.
#   D   the defaults;
#   K1  FERRY_STAGING_ISSUER_RETIRE_US=300 (the submitting thread retires the
#       first group of its gathers while the worker sleeps) and
#       FERRY_STAGING_SCATTER_RETIRE_US=300 (the tcp thread that brought a
#       READ's payload retires its scatters);
#   KA  K1 and FERRY_STAGING_ISSUER_RETIRE_GROUPS=256 (new: the submitting
#       thread retires every group of its gathers within the budget, the
#       worker sleeping meanwhile, not spinning).
# Cells (bench/gpu_cost.sh, TGPU=0: cuda:0 -> tcp loopback -> cuda:0, two
# processes under MPS, 16 KiB): one thread, staged WRITE and READ, batch 128
# and 1,024, D K1 KA three times; four threads D KA D KA (item 3, and what
# KA costs there); host memory one thread (item 4's bound); traces of KA;
# the idle engine with KA; then without MPS the staging matrix on cuda:0 and
# tests/gpu/run.sh, both with KA in every process.
#   BUILD=build-h16a [OUT=dir] [DRY=1] bash build-h16a/bench/calls/gpu_h16a_call2.sh
# DRY=1 prints the steps instead of running them (no GPU needed).
set -uo pipefail
B=${BUILD:-build-gpu}
export BUILD=$B
here=$(cd "$(dirname "$0")/.." && pwd)   # bench/ (this script lies in bench/calls/)
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
O=${OUT:-/tmp/h16a-out}
mkdir -p "$O"
DRY=${DRY:-0}
. "$here/mps_lib.sh"
D=""
K1="FERRY_STAGING_ISSUER_RETIRE_US=300 FERRY_STAGING_SCATTER_RETIRE_US=300"
KA="$K1 FERRY_STAGING_ISSUER_RETIRE_GROUPS=256"
cost() {  # label, setting name, then env assignments for gpu_cost.sh (both processes get the setting)
  local label=$1 set=$2
  shift 2
  echo "== $(date -u +%T) $label [$set: ${!set}] (mps: $(mps_state))"
  if [ "$DRY" = 1 ]; then
    echo "   gpu_cost.sh $* ${!set}"
    return
  fi
  # shellcheck disable=SC2086  # the setting: zero or more assignments
  timeout -k 5 90 env TGPU=0 IDLE=0 "$@" ${!set} bash "$here/gpu_cost.sh" 2>&1 | grep -v '^|---\|^| memory'
}
step() {  # label, then the command
  echo "== $(date -u +%T) $1 (mps: $(mps_state))"
  shift
  if [ "$DRY" = 1 ]; then
    echo "   $*"
    return 0
  fi
  "$@"
}
trap mps_stop EXIT
trap 'mps_stop; exit 143' TERM INT
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -2 | tr '\n' ' ') cpus $(nproc)"
step "reference: staging_bench cuda:0 0.5 16384" timeout -k 5 30 "$B/staging_bench" cuda:0 0.5 16384
mps_start
for r in 1 2 3; do
  for s in D K1 KA; do
    cost "round $r, one thread, staged" $s MEMS=cuda0 THREADS=1 SECS=2
  done
done
for r in 1 2; do
  for s in D KA; do
    cost "round $r, four threads, staged" $s MEMS=cuda0 THREADS=4 SECS=1
  done
done
cost "host memory, one thread (item 4's bound)" D MEMS=cpu THREADS=1 SECS=2
# shellcheck disable=SC2086
step "traces, KA" timeout -k 5 40 env SECS=1 THREADS=1 $KA bash "$here/gpu_trace.sh" \
  "staged tcp cuda:0 cuda:0 write 16384" "staged tcp cuda:0 cuda:0 read 16384"
cost "idle engine, KA (one thread, WRITE 128, then 10 s idle)" KA MEMS=cuda0 THREADS=1 SECS=1 OPS=write BATCHES=128 IDLE=10
mps_stop
# shellcheck disable=SC2086
step "staging matrix on cuda:0 with KA" timeout -k 5 120 env FERRY_TEST_DEVICE=cuda:0 $KA "$B/tests/test_staging" \
  > "$O/test_staging_KA.txt" 2>&1
echo "rc $?"; grep -E '^\[  (PASSED|FAILED) |^\[  FAILED' "$O/test_staging_KA.txt" | head
# shellcheck disable=SC2086
step "tests/gpu/run.sh with KA" timeout -k 5 200 env $KA OUT="$O/gpu" BUILD="$B" bash tests/gpu/run.sh \
  > "$O/run_sh_KA.txt" 2>&1
echo "run.sh rc $?"; grep -E 'PASSED|FAILED|gpu0->gpu0|iperf3 loopback|^\| (16|64) KiB|^\| 1024 KiB' "$O/run_sh_KA.txt" | cut -c1-260
echo "== $(date -u +%T) done"
