#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16y_call3.sh — not run yet (h16y had two device calls): what the next
# GPU call should measure of h16y's defaults.  (1) The staging pipeline's
# scatter, alternated twice: D the defaults (scatter groups of 4 MiB, large
# blocks' groups on the copy engine), F D + FERRY_STAGING_READ_GROUP_FIRST_BYTES=1048576
# (a round's first scatter group on the kernel, which starts at once: does it
# win back the one 64 KiB batch at a time, 0.79 -> 0.70, without losing the
# 0.96 with 4 in flight?), R FERRY_CUDA_KERNEL_H2D_CALL_MIN=0 (the kernel
# only).  (2) End to end, staged READ over tcp loopback with one and four
# threads at 64 KiB and 16 KiB (the engine calls are issued by a tcp
# receiver thread that brought several frames at once), D R D R.  (3) The GPU
# tests of the tree (tests/gpu/run.sh) with the defaults.
#   BUILD=build-gpu [OUT=dir] [DRY=1] [SECS=0.3] [TGPU=0] bash bench/calls/gpu_h16y_call3.sh
# (BUILD: the bundle of tests/gpu/bundle.sh.)  DRY=1 prints the commands.
set -uo pipefail
B=${BUILD:-build-gpu}
S=${SECS:-0.3}
O=${OUT:-/tmp/h16y-out}
mkdir -p "$O"
here=$(cd "$(dirname "$0")/.." && pwd)   # bench/ (this script lies in bench/calls/)
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
DRY=${DRY:-0}
D="FERRY_LOG_LEVEL=1"
F="FERRY_STAGING_READ_GROUP_FIRST_BYTES=1048576"
R="FERRY_CUDA_KERNEL_H2D_CALL_MIN=0"
x() {
  local label=$1 envs=$2
  shift 3
  echo "== $(date -u +%T) $label [$envs] $*"
  [ "$DRY" = 1 ] && return
  # shellcheck disable=SC2086
  timeout -k 3 40 env $envs "$@" 2>&1 | grep -E '^\| [0-9]+ KiB|rror|fail|FAIL'
}
sb="$B/staging_bench"
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -2 | tr '\n' ' ') cpus $(nproc)"
for r in 1 2; do
  for v in D F R; do
    x "round $r $v 4 in flight" "${!v}" -- "$sb" --op=scatter --depth=4 cuda:0 "$S" 4096 16384 65536 1048576
    x "round $r $v 1 at a time" "${!v}" -- "$sb" --op=scatter cuda:0 "$S" 16384 65536 1048576
  done
done
for r in 1 2; do
  for v in D R; do
    echo "== $(date -u +%T) round $r $v end to end, staged READ"
    [ "$DRY" = 1 ] && continue
    for blk in 65536 16384; do
      timeout -k 5 60 env BUILD="$B" SECS=1 IDLE=0 TGPU="${TGPU:-0}" MEMS=cuda0 OPS=read BATCHES=128 THREADS="1 4" \
        BLOCK=$blk CELL_ENV="${!v}" bash "$here/gpu_cost.sh" 2>&1 | grep -v '^|---\|^| memory'
    done
  done
done
echo "== $(date -u +%T) tests/gpu/run.sh"
[ "$DRY" = 1 ] || BUILD="$B" timeout -k 5 200 bash tests/gpu/run.sh > "$O/gpu-run.txt" 2>&1
echo "rc $?"
[ "$DRY" = 1 ] || grep -iE 'passed|failed|status|verified' "$O/gpu-run.txt" | tail -15
echo "== $(date -u +%T) done"
