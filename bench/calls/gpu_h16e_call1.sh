#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16e_call1.sh — issue 16 items 3-4 on ONE GPU under CUDA MPS (h16e's
# first call): staged frames smaller and on more connections, so that a
# batch's first bytes leave sooner and more threads copy its cold,
# GPU-written chunks into and out of the sockets (h16a's trace: 113 us to
# write one 512 KiB staged frame, 147 us from its header to its payload at
# the target).  Until now FERRY_TCP_SPREAD=8 was measured on four
# connections only (FERRY_TCP_CONNECTIONS=4: two frames a connection, one
# after the other) and never under MPS.
#   1. the same-run reference (staging_bench: a large pinned D2H / H2D);
#   2. under MPS: host memory, one thread (item 4's bound);
#   3. two rounds of the settings below, one thread, staged WRITE / READ,
#      batch 128 and 1,024 (bench/gpu_cost.sh, TGPU=0);
#   4. four threads, D and the two spread settings of 8 (item 3's ratio);
#   5. traces of a staged batch of 128, D and C8S8, WRITE and READ.
#   BUILD=build-h16e [OUT=dir] [DRY=1] bash build-h16e/bench/calls/gpu_h16e_call1.sh
set -uo pipefail
B=${BUILD:-build-gpu}
export BUILD=$B
here=$(cd "$(dirname "$0")/.." && pwd)   # bench/ (this script lies in bench/calls/)
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
O=${OUT:-$(mktemp -d)}
mkdir -p "$O"
DRY=${DRY:-0}
. "$here/mps_lib.sh"
D=""
C8S8="FERRY_TCP_CONNECTIONS=8 FERRY_TCP_SPREAD=8"
C8S8G1="FERRY_TCP_CONNECTIONS=8 FERRY_TCP_SPREAD=8 FERRY_STAGING_GROUP_FIRST=1"
C8="FERRY_TCP_CONNECTIONS=8"
MS1="FERRY_STAGING_MARK_STREAMS=1"
C16S16="FERRY_TCP_CONNECTIONS=16 FERRY_TCP_SPREAD=16"
cost() {  # label, setting name, then env assignments for gpu_cost.sh
  local label=$1 name=$2
  shift 2
  echo "== $(date -u +%T) $label $name [${!name}] (mps: $(mps_state))"
  if [ "$DRY" = 1 ]; then
    echo "   gpu_cost.sh $* CELL_ENV=${!name}"
    return
  fi
  timeout -k 5 120 env TGPU=0 IDLE=0 CELL_ENV="${!name}" "$@" bash "$here/gpu_cost.sh" 2>&1 |
    grep -v '^|---\|^| memory'
}
trace() {  # setting name, op
  local name=$1 op=$2
  echo "== $(date -u +%T) trace $name $op (mps: $(mps_state))"
  [ "$DRY" = 1 ] && return
  # shellcheck disable=SC2086  # the setting: zero or more assignments
  timeout -k 5 40 env SECS=1 THREADS=1 bash "$here/gpu_trace.sh" "staged tcp cuda:0 cuda:0 $op 16384 ${!name}" 2>&1 |
    grep -v '^batch_submit \|^stage_queued\|^copy_queued'
}
trap mps_stop EXIT
trap 'mps_stop; exit 143' TERM INT
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name,driver_version,compute_mode --format=csv,noheader 2>/dev/null | head -2 | tr '\n' ' ') cpus $(nproc)"
echo "== $(date -u +%T) reference: staging_bench cuda:0 0.5 16384"
[ "$DRY" = 1 ] || timeout -k 5 30 "$B/staging_bench" cuda:0 0.5 16384
mps_start
cost "host, one thread" D MEMS=cpu THREADS=1
for r in 1 2; do
  for s in D C8S8 C8S8G1 C16S16 C8 MS1; do
    cost "round $r, staged, one thread:" $s MEMS=cuda0 THREADS=1
  done
done
for s in D C8S8 C8S8G1; do
  cost "staged, four threads:" $s MEMS=cuda0 THREADS=4
done
for s in D C8S8; do
  trace $s write
  trace $s read
done
mps_stop
echo "== $(date -u +%T) done"
