#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16e_call3.sh — h16e's last call on ONE GPU: more rounds of main
# against this branch where it differs (staged 16 KiB x 128), what the
# branch leaves unchanged by design checked side by side, and the GPU tests.
#   1. the same-run reference (staging_bench: a large pinned D2H / H2D);
#   2. under MPS: two more rounds, one thread, staged WRITE / READ of 128,
#      the builds in turn (the branch first in round 3, main in round 4);
#   3. under MPS: the branch with FERRY_TCP_SPREAD_STAGED=6 and =12, and with
#      FERRY_STAGING_GROUP_FIRST=1 (one round);
#   4. under MPS: the CPU of an idle engine over 10 s, both builds;
#   5. without MPS: staged 64 KiB x 128 (two rounds) and 1 MiB x 128 (one),
#      both builds (tests/gpu/run.sh's cells: the same frames in both);
#   6. without MPS, tests/gpu/run.sh on the branch's bundle.
#   MAIN=build-h16e/main NEW=build-h16e/merged [OUT=dir] [DRY=1] bash build-h16e/bench/calls/gpu_h16e_call3.sh
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
  echo "== $(date -u +%T) $label $b $* (mps: $(mps_state))"
  [ "$DRY" = 1 ] && return
  timeout -k 5 120 env BUILD="$b" TGPU=0 IDLE=0 "$@" bash "$here/gpu_cost.sh" 2>&1 | grep -v '^|---\|^| memory'
}
trap mps_stop EXIT
trap 'mps_stop; exit 143' TERM INT
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name,driver_version,compute_mode --format=csv,noheader 2>/dev/null | head -2 | tr '\n' ' ') cpus $(nproc)"
echo "== $(date -u +%T) reference: staging_bench cuda:0 0.5 16384"
[ "$DRY" = 1 ] || LD_LIBRARY_PATH="$PWD/$N/lib" timeout -k 5 30 "$N/staging_bench" cuda:0 0.5 16384
mps_start
cost "host, one thread" "$N" MEMS=cpu THREADS=1 BATCHES=128
cost "round 3, staged, one thread" "$N" MEMS=cuda0 THREADS=1 BATCHES=128
cost "round 3, staged, one thread" "$M" MEMS=cuda0 THREADS=1 BATCHES=128
cost "round 4, staged, one thread" "$M" MEMS=cuda0 THREADS=1 BATCHES=128
cost "round 4, staged, one thread" "$N" MEMS=cuda0 THREADS=1 BATCHES=128
for v in FERRY_TCP_SPREAD_STAGED=6 FERRY_TCP_SPREAD_STAGED=12 FERRY_STAGING_GROUP_FIRST=1; do
  cost "variant, staged, one thread" "$N" MEMS=cuda0 THREADS=1 BATCHES=128 CELL_ENV="$v"
done
cost "idle engine" "$M" THREADS=" " IDLE=10
cost "idle engine" "$N" THREADS=" " IDLE=10
mps_stop
for r in 1 2; do
  cost "round $r, no MPS, 64 KiB" "$M" MEMS=cuda0 THREADS=1 BATCHES=128 BLOCK=65536
  cost "round $r, no MPS, 64 KiB" "$N" MEMS=cuda0 THREADS=1 BATCHES=128 BLOCK=65536
done
cost "no MPS, 1 MiB" "$M" MEMS=cuda0 THREADS=1 BATCHES=128 BLOCK=1048576
cost "no MPS, 1 MiB" "$N" MEMS=cuda0 THREADS=1 BATCHES=128 BLOCK=1048576
echo "== $(date -u +%T) tests/gpu/run.sh on $N (no MPS)"
if [ "$DRY" != 1 ]; then
  gpu_out=$(mktemp -d)
  timeout -k 10 300 env BUILD="$N" OUT="$gpu_out" bash tests/gpu/run.sh
  echo "tests/gpu/run.sh rc $?"
fi
echo "== $(date -u +%T) done"
