#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16e_call2.sh — issue 16 items 3-4 on ONE GPU under CUDA MPS (h16e's
# second call): main's binaries against this branch's (staged small-block
# submits as 8 frames on 8 connections from 16 cores,
# FERRY_TCP_SPREAD_STAGED), cell by cell in one run, then the GPU tests.
#   1. the same-run reference (staging_bench: a large pinned D2H / H2D);
#   2. under MPS: host memory, one thread, both builds (unchanged by design);
#   3. two rounds, one thread, staged WRITE / READ, batch 128 and 1,024,
#      the builds in turn (main first in round 1, the branch in round 2);
#   4. four threads, staged, both builds (item 3's ratio);
#   5. the branch's traces of a staged batch of 128, WRITE and READ, and
#      the CPU of its idle engine over 10 s;
#   6. without MPS, tests/gpu/run.sh on the branch's bundle.
#   MAIN=build-h16e/main NEW=build-h16e/merged [OUT=dir] [DRY=1] bash build-h16e/bench/calls/gpu_h16e_call2.sh
set -uo pipefail
M=${MAIN:-build-h16e/main}
N=${NEW:-build-h16e/merged}
here=$(cd "$(dirname "$0")/.." && pwd)   # bench/ (this script lies in bench/calls/)
O=${OUT:-$(mktemp -d)}
mkdir -p "$O"
DRY=${DRY:-0}
. "$here/mps_lib.sh"
cost() {  # label, build, then env assignments for gpu_cost.sh
  local label=$1 b=$2
  shift 2
  echo "== $(date -u +%T) $label $b (mps: $(mps_state))"
  if [ "$DRY" = 1 ]; then
    echo "   BUILD=$b gpu_cost.sh $*"
    return
  fi
  timeout -k 5 120 env BUILD="$b" TGPU=0 IDLE=0 "$@" bash "$here/gpu_cost.sh" 2>&1 | grep -v '^|---\|^| memory'
}
trap mps_stop EXIT
trap 'mps_stop; exit 143' TERM INT
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name,driver_version,compute_mode --format=csv,noheader 2>/dev/null | head -2 | tr '\n' ' ') cpus $(nproc)"
echo "== $(date -u +%T) reference: staging_bench cuda:0 0.5 16384"
[ "$DRY" = 1 ] || LD_LIBRARY_PATH="$PWD/$N/lib" timeout -k 5 30 "$N/staging_bench" cuda:0 0.5 16384
mps_start
cost "host, one thread" "$M" MEMS=cpu THREADS=1
cost "host, one thread" "$N" MEMS=cpu THREADS=1
cost "round 1, staged, one thread" "$M" MEMS=cuda0 THREADS=1
cost "round 1, staged, one thread" "$N" MEMS=cuda0 THREADS=1
cost "round 2, staged, one thread" "$N" MEMS=cuda0 THREADS=1
cost "round 2, staged, one thread" "$M" MEMS=cuda0 THREADS=1
cost "staged, four threads" "$M" MEMS=cuda0 THREADS=4
cost "staged, four threads" "$N" MEMS=cuda0 THREADS=4
echo "== $(date -u +%T) traces of $N (mps: $(mps_state))"
[ "$DRY" = 1 ] || timeout -k 5 40 env BUILD="$N" SECS=1 THREADS=1 bash "$here/gpu_trace.sh" \
  "staged tcp cuda:0 cuda:0 write 16384" "staged tcp cuda:0 cuda:0 read 16384" 2>&1 |
  grep -v '^batch_submit \|^stage_queued\|^copy_queued'
# no cells (THREADS of one blank): the idle engine alone
cost "idle engine, staged cuda:0" "$N" THREADS=" " IDLE=10
mps_stop
echo "== $(date -u +%T) tests/gpu/run.sh on $N (no MPS)"
if [ "$DRY" != 1 ]; then
  gpu_out=$(mktemp -d)
  timeout -k 10 300 env BUILD="$N" OUT="$gpu_out" bash tests/gpu/run.sh
  echo "tests/gpu/run.sh rc $?"
fi
echo "== $(date -u +%T) done"
