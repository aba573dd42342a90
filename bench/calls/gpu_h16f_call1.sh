#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16f_call1.sh — issue 16 item 4 on ONE GPU under CUDA MPS (h16f's one
# call): main's binaries against this branch's (a staged WRITE round of
# 4 MiB or more taken while nothing is in flight is chained: its groups one
# after another on a mark stream, FERRY_STAGING_CHAIN_BYTES /
# FERRY_STAGING_CHAIN_LANES), cell by cell in one run, then the GPU tests.
#   1. the same-run reference (staging_bench: a large pinned D2H, the gather),
#      and the gather pipeline alone at 4 MiB and more a batch, both builds;
#   2. under MPS: host memory, one thread, WRITE / READ, 128 / 1,024 (the bound);
#   3. two rounds, one thread, staged WRITE, the builds and the branch's
#      variants in turn (main first in round 1, last in round 2): at 128
#      main, branch, chained from 1 MiB (C1), C1 on two lanes (C1L2), C1 with
#      a first group of one frame (C1F1); at 1,024
#      main, branch, two lanes (L2), groups of up to 4 frames (G4);
#   4. staged READ (the same code in both builds), four threads WRITE;
#   5. traces of a staged WRITE of 1,024, main and the branch; the CPU of the
#      branch's idle engine over 5 s;
#   6. without MPS, tests/gpu/run.sh on the branch's binaries.
# As run (docs/BENCHMARKS.md, h16f) the branch's binaries chained on one lane
# (FERRY_STAGING_CHAIN_LANES=1 then); two is the default since, so "L2" is
# now the branch's default and one lane needs FERRY_STAGING_CHAIN_LANES=1.
#   MAIN=build-h16f/main NEW=build-h16f/new [SECS=2] [GPU_OUT=dir] bash build-h16f/bench/calls/gpu_h16f_call1.sh
set -uo pipefail
M=${MAIN:-build-h16f/main}
N=${NEW:-build-h16f/new}
SECS=${SECS:-2}
here=$(cd "$(dirname "$0")/.." && pwd)   # bench/ (this script lies in bench/calls/)
export LD_LIBRARY_PATH="$PWD/$N/lib:${LD_LIBRARY_PATH:-}"
. "$here/mps_lib.sh"
cost() {  # label, build, then env assignments for gpu_cost.sh
  local label=$1 b=$2
  shift 2
  echo "== $(date -u +%T) $label $b $*"
  timeout -k 5 60 env BUILD="$b" TGPU=0 IDLE=0 SECS="$SECS" "$@" bash "$here/gpu_cost.sh" 2>&1 |
    grep -v '^|---\|^| memory'
}
w128() { cost "$1" "$2" MEMS=cuda0 THREADS=1 OPS=write BATCHES=128 "${@:3}"; }
w1024() { cost "$1" "$2" MEMS=cuda0 THREADS=1 OPS=write BATCHES=1024 "${@:3}"; }
trap mps_stop EXIT
trap 'mps_stop; exit 143' TERM INT
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name,driver_version,compute_mode --format=csv,noheader 2>/dev/null | head -2 | tr '\n' ' ') cpus $(nproc)"
echo "== $(date -u +%T) reference: staging_bench cuda:0 0.5 16384"
timeout -k 5 30 "$N/staging_bench" cuda:0 0.5 16384
# the pipeline alone, one batch at a time (what tests/gpu/run.sh measures):
# a 1,024 x 16 KiB, 128 x 64 KiB or 128 x 1 MiB batch is a round of 4 MiB or
# more, chained by the branch (its gathers one after another: less PCIe at once)
for v in "main $M" "branch $N" "L2 $N FERRY_STAGING_CHAIN_LANES=2"; do
  set -- $v
  echo "== $(date -u +%T) gather pipeline alone, $1"
  timeout -k 5 30 env "${@:3}" "$2/staging_bench" --op=gather --batch=1024 cuda:0 0.5 16384 | grep '^|'
  timeout -k 5 30 env "${@:3}" "$2/staging_bench" --op=gather cuda:0 0.5 65536 1048576 | grep '^|'
done
mps_start
cost "host, one thread" "$N" MEMS=cpu THREADS=1
for r in 1 2; do
  order="main new"; [ $r = 2 ] && order="new main"
  for who in $order; do
    if [ $who = main ]; then
      w128 "round $r, 128, main" "$M"
      w1024 "round $r, 1024, main" "$M"
    else
      w128 "round $r, 128, branch" "$N"
      w128 "round $r, 128, C1" "$N" CELL_ENV="FERRY_STAGING_CHAIN_BYTES=1048576"
      w128 "round $r, 128, C1L2" "$N" CELL_ENV="FERRY_STAGING_CHAIN_BYTES=1048576 FERRY_STAGING_CHAIN_LANES=2"
      w128 "round $r, 128, C1F1" "$N" CELL_ENV="FERRY_STAGING_CHAIN_BYTES=1048576 FERRY_STAGING_GROUP_FIRST=1"
      w1024 "round $r, 1024, branch" "$N"
      w1024 "round $r, 1024, L2" "$N" CELL_ENV="FERRY_STAGING_CHAIN_LANES=2"
      w1024 "round $r, 1024, G4" "$N" CELL_ENV="FERRY_STAGING_GROUP=4"
    fi
  done
done
cost "staged READ, one thread" "$M" MEMS=cuda0 THREADS=1 OPS=read
cost "staged READ, one thread" "$N" MEMS=cuda0 THREADS=1 OPS=read
cost "staged WRITE, four threads" "$M" MEMS=cuda0 THREADS=4 OPS=write
cost "staged WRITE, four threads" "$N" MEMS=cuda0 THREADS=4 OPS=write
for b in "$M" "$N"; do
  echo "== $(date -u +%T) trace of $b, WRITE 1,024"
  timeout -k 5 30 env BUILD="$b" SECS=1 THREADS=1 BATCH=1024 bash "$here/gpu_trace.sh" \
    "staged tcp cuda:0 cuda:0 write 16384" 2>&1 | grep -v '^batch_submit \|^stage_queued\|^copy_queued'
done
# no cells (THREADS of one blank): the idle engine alone
cost "idle engine, staged cuda:0" "$N" THREADS=" " IDLE=5
mps_stop
echo "== $(date -u +%T) tests/gpu/run.sh on $N (no MPS)"
gpu_out=${GPU_OUT:-$(mktemp -d)}
timeout -k 10 150 env BUILD="$N" OUT="$gpu_out" bash tests/gpu/run.sh
echo "tests/gpu/run.sh rc $?"
echo "== $(date -u +%T) done"
