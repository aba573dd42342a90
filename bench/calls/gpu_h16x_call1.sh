#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16x_call1.sh — issue 16 items 3-4, h16x's first GPU call (one H200:
# initiator cuda:0 -> tcp loopback -> target cuda:0, two processes, 16 KiB
# blocks, one submitting thread): the staging reference (a large pinned
# D2H), traces of a staged WRITE and READ of 128 blocks, then three
# settings alternated twice (D S8 K D S8 K, 2 s cells, WRITE and READ,
# batch 128 and 1,024): D the defaults, S8 FERRY_TCP_SPREAD=8 (a submit's
# small blocks as 8 frames, not 4), K the two new hand-offs
# (FERRY_STAGING_INLINE_LAST=1, FERRY_STAGING_SCATTER_RETIRE_US=300); host
# memory READ with D and S8 alternated (does a READ spread of 8 cost the
# host path?) and host WRITE once (item 4's bound).
#   BUILD=build-h16x [DRY=1] bash bench/calls/gpu_h16x_call1.sh
# DRY=1 prints the cells instead of running them (no GPU needed).
set -uo pipefail
B=${BUILD:-build-gpu}
export BUILD=$B
here=$(cd "$(dirname "$0")/.." && pwd)   # bench/ (this script lies in bench/calls/)
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
DRY=${DRY:-0}
D=""
S8="FERRY_TCP_SPREAD=8"
K="FERRY_STAGING_INLINE_LAST=1 FERRY_STAGING_SCATTER_RETIRE_US=300"
cost() {  # label, then env assignments for gpu_cost.sh
  local label=$1
  shift
  echo "== $(date -u +%T) $label"
  if [ "$DRY" = 1 ]; then
    echo "   gpu_cost.sh $*"
    return
  fi
  timeout -k 5 60 env TGPU=0 IDLE=0 THREADS=1 "$@" bash "$here/gpu_cost.sh" 2>&1 |
    grep -v '^|---\|^| memory'
}
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -2 | tr '\n' ' ') cpus $(nproc)"
[ "$DRY" = 1 ] || timeout -k 5 30 "$B/staging_bench" cuda:0 0.5 16384 2>&1 | tail -3
echo "== $(date -u +%T) traces (defaults)"
[ "$DRY" = 1 ] || timeout -k 5 40 env BUILD="$B" SECS=1 THREADS=1 bash "$here/gpu_trace.sh" \
  "staged tcp cuda:0 cuda:0 write 16384" \
  "staged tcp cuda:0 cuda:0 read 16384" 2>&1 |
  grep -v '^batch_submit \|^stage_queued\|^copy_queued'
cost "host write, defaults (item 4's bound)" MEMS=cpu OPS=write SECS=1
for r in 1 2; do
  for s in D S8 K; do
    cost "round $r $s staged" MEMS=cuda0 SECS=2 CELL_ENV="${!s}"
  done
  for s in D S8; do
    cost "round $r $s host read" MEMS=cpu OPS=read SECS=1 CELL_ENV="${!s}"
  done
done
echo "== $(date -u +%T) done"
