#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16a_call3.sh — h16a's third call (one H200, under MPS where it says
# so): why a staged WRITE's first gather group (one frame of 32 x 16 KiB)
# retires 64-82 us after its launch end to end (call 2's traces, with the
# submitting thread polling it too, so not the worker's wake-up), where
# 512 KiB need ~10 us of PCIe and the target's synchronous H2D of such a
# frame is done in 21 us.
#   A. the pool alone (staging_bench, --gap=400: the pool idle between
#      batches as end to end), one frame (--batch=32) and a batch of 128,
#      gathers, p50 / p99 of a batch, in variants: D; SPIN (the worker
#      awake: FERRY_STAGING_SPIN_US=1000); CE (the copy engine, not the
#      gather kernel: FERRY_CUDA_GATHER_KERNEL=0); CTA8
#      (FERRY_CUDA_KERNEL_CTAS=8); and the pool's timeline of D
#      (FERRY_TRACE); scatters of one frame D / CE;
#   B. end to end under MPS, one thread, staged WRITE 128 and 1,024: D
#      against the variant of A with the lowest one-frame + 128 p50 (if it
#      beats D's by 10 %) and call 2's KA (the submitting thread retires
#      every group of its gathers), alternated D X KA D X KA, and a trace of X.
#   BUILD=build-h16a [OUT=dir] [DRY=1] bash build-h16a/bench/calls/gpu_h16a_call3.sh
set -uo pipefail
B=${BUILD:-build-gpu}
export BUILD=$B
here=$(cd "$(dirname "$0")/.." && pwd)   # bench/ (this script lies in bench/calls/)
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
O=${OUT:-/tmp/h16a-out}
mkdir -p "$O"
DRY=${DRY:-0}
. "$here/mps_lib.sh"
D="FERRY_LOG_LEVEL=1"
SPIN="FERRY_STAGING_SPIN_US=1000"
ISS="FERRY_STAGING_ISSUER_RETIRE_US=300"
CE="FERRY_CUDA_GATHER_KERNEL=0"
CTA8="FERRY_CUDA_KERNEL_CTAS=8"
KA="FERRY_STAGING_ISSUER_RETIRE_US=300 FERRY_STAGING_SCATTER_RETIRE_US=300 FERRY_STAGING_ISSUER_RETIRE_GROUPS=256"
declare -A P50
sb() {  # variant, op, batch: one staging_bench line; remembers the p50
  local v=$1 op=$2 batch=$3 line col=6
  [ "$op" = scatter ] && col=10
  echo "== $(date -u +%T) pool alone: $v [${!v}] $op, batch $batch (mps: $(mps_state))"
  [ "$DRY" = 1 ] && return
  # shellcheck disable=SC2086
  line=$(timeout -k 3 30 env ${!v} "$B/staging_bench" --gap=400 --op="$op" --batch="$batch" cuda:0 0.5 16384 2>&1 |
    grep '^| 16 KiB')
  echo "$line"
  P50[$v.$op.$batch]=$(echo "$line" | awk -F'|' -v c="$col" '{gsub(/ /, "", $c); printf "%d", $c}')
}
cost() {  # label, setting name
  local label=$1 set=$2
  echo "== $(date -u +%T) $label [$set: ${!set}] (mps: $(mps_state))"
  [ "$DRY" = 1 ] && return
  # shellcheck disable=SC2086
  timeout -k 5 60 env TGPU=0 IDLE=0 MEMS=cuda0 THREADS=1 OPS=write SECS=2 ${!set} bash "$here/gpu_cost.sh" 2>&1 |
    grep -v '^|---\|^| memory'
}
trap mps_stop EXIT
trap 'mps_stop; exit 143' TERM INT
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -2 | tr '\n' ' ') cpus $(nproc)"
echo "## columns: block | gather GB/s | large D2H | ratio | p50 | p99 | scatter GB/s | large H2D | ratio | p50 | p99"
sb D gather 32
mps_start
for v in D SPIN CE CTA8; do
  sb $v gather 32
  sb $v gather 128
done
for v in D CE; do sb $v scatter 32; done
echo "== $(date -u +%T) pool timeline, D, gathers of 128 (--gap=400)"
if [ "$DRY" != 1 ]; then
  rm -f "$O"/sbtrace.*
  timeout -k 3 30 env FERRY_TRACE="$O/sbtrace.%d" "$B/staging_bench" --gap=400 --op=gather cuda:0 0.5 16384 >/dev/null 2>&1
  python3 "$here/trace_batches.py" "$O"/sbtrace.* 2>&1 | head -30
fi
best=D
if [ "$DRY" != 1 ]; then
  score() { echo $(( ${P50[$1.gather.32]:-999999} + ${P50[$1.gather.128]:-999999} )); }
  bs=$(score D)
  for v in SPIN CE CTA8; do
    s=$(score "$v")
    if [ $((s * 10)) -lt $((bs * 9)) ] && { [ "$best" = D ] || [ "$s" -lt "$(score "$best")" ]; }; then best=$v; fi
  done
else
  best=SPIN
fi
echo "== $(date -u +%T) end to end: D against $best [${!best}]"
for r in 1 2; do
  cost "round $r" D
  [ "$best" = D ] || cost "round $r" "$best"
  cost "round $r" KA
done
if [ "$best" != D ] && [ "$DRY" != 1 ]; then
  # shellcheck disable=SC2086
  timeout -k 5 30 env SECS=1 THREADS=1 ${!best} bash "$here/gpu_trace.sh" "staged tcp cuda:0 cuda:0 write 16384" 2>&1 |
    grep -v '^batch_submit \|^stage_queued\|^copy_queued'
fi
mps_stop
echo "== $(date -u +%T) done"
