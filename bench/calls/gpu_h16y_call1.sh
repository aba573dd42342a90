#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16y_call1.sh — issue 16 item 1, h16y's first GPU call (one H200, one
# process: staging_bench): can anything scatter (H2D) past ~0.92 of one
# large pinned copy?  First the primitives (bench/h2d_probe.c: k copies of
# S bytes a call, N streams each with two calls queued; the gather kernel
# reading host memory, then the copy engine with FERRY_CUDA_KERNEL_H2D_MAX=0,
# then the scatter through a device buffer: one copy-engine H2D of the
# whole, a D2D kernel from it), then the staging pipeline's scatter under
# three settings alternated twice (K CE BR, K CE BR):
#   K   the defaults (the kernel reads host memory up to 1 MiB blocks)
#   CE  FERRY_CUDA_KERNEL_H2D_MAX=32768: blocks of 64 KiB and up on the copy engine
#   BR  FERRY_STAGING_AGGREGATE_READ=2M FERRY_CUDA_KERNEL_H2D_ONE_MAX=65536 (new):
#       each READ chunk one copy-engine H2D into the chunk's device buffer,
#       then the kernel's D2D from it (one-block frames, 1 MiB: as before)
# with 4 (2 for 1,024-block batches) and 1 batch in flight; the defaults'
# gather beside them once, and a FERRY_TRACE of one 64 KiB batch at a time.
#   BUILD=build-h16y [OUT=dir] [DRY=1] [SECS=0.3] bash bench/calls/gpu_h16y_call1.sh
# DRY=1 prints the commands instead of running them (no GPU needed).
set -uo pipefail
B=${BUILD:-build-gpu}
S=${SECS:-0.3}
O=${OUT:-/tmp/h16y-out}
mkdir -p "$O"
here=$(cd "$(dirname "$0")/.." && pwd)   # bench/ (this script lies in bench/calls/)
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
DRY=${DRY:-0}
K="FERRY_LOG_LEVEL=1"
CE="FERRY_CUDA_KERNEL_H2D_MAX=32768"
BR="FERRY_STAGING_AGGREGATE_READ=2M FERRY_CUDA_KERNEL_H2D_ONE_MAX=65536"
# x LABEL ENV -- command: runs it under a timeout, its table rows only
x() {
  local label=$1 envs=$2
  shift 3
  echo "== $(date -u +%T) $label [$envs] $*"
  [ "$DRY" = 1 ] && return
  # shellcheck disable=SC2086
  timeout -k 3 40 env $envs "$@" 2>&1 | grep -E '^\| [0-9]+ KiB|^#|^h2d|^d2h|^bounce|rror|fail|FAIL'
}
sb="$B/staging_bench"
pr="$B/h2d_probe"
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -2 | tr '\n' ' ') cpus $(nproc)"
echo "## staging_bench columns: block | gather GB/s | large D2H | ratio | p50 | p99 | scatter GB/s | large H2D | ratio | p50 | p99"
cells="65536:16:1 65536:16:4 65536:32:4 16384:64:4 1048576:1:1 1048576:1:4 1048576:2:4 4194304:1:2"
x "probe kernel" "$K" -- "$pr" cuda:0 "$S" h2d $cells
x "probe copy engine" "FERRY_CUDA_KERNEL_H2D_MAX=0 FERRY_CUDA_KERNEL_H2D_ONE_MAX=0" -- "$pr" cuda:0 "$S" h2d $cells
x "probe bounce (engine H2D, kernel D2D)" "FERRY_CUDA_KERNEL_H2D_ONE_MAX=0" -- "$pr" cuda:0 "$S" bounce \
  65536:16:2 65536:16:4 65536:32:4 16384:64:4 1048576:1:4
x "probe kernel again" "$K" -- "$pr" cuda:0 "$S" h2d 65536:32:4 1048576:1:4
x "gather+scatter defaults, 4 in flight" "$K" -- "$sb" --depth=4 cuda:0 "$S" 4096 16384 65536 1048576
for r in 1 2; do
  for v in K CE BR; do
    x "round $r $v 4 in flight" "${!v}" -- "$sb" --op=scatter --depth=4 cuda:0 "$S" 4096 16384 65536 1048576
    x "round $r $v 1 in flight" "${!v}" -- "$sb" --op=scatter cuda:0 "$S" 16384 65536 1048576
    x "round $r $v 1024, 2 in flight" "${!v}" -- "$sb" --op=scatter --batch=1024 --depth=2 cuda:0 "$S" 16384
    x "round $r $v 1024, 1 in flight" "${!v}" -- "$sb" --op=scatter --batch=1024 cuda:0 "$S" 16384
  done
done
x "K, 64 frames (FERRY_STAGING_CHUNKS=32)" "FERRY_STAGING_CHUNKS=32" -- "$sb" --op=scatter --depth=4 cuda:0 "$S" 65536 1048576
x "BR, 64 frames" "$BR FERRY_STAGING_CHUNKS=32" -- "$sb" --op=scatter --depth=4 cuda:0 "$S" 65536 1048576
x "gather defaults, 1 in flight" "$K" -- "$sb" --op=gather cuda:0 "$S" 4096 16384 65536 1048576
echo "== $(date -u +%T) trace, one 64 KiB batch at a time, defaults"
if [ "$DRY" != 1 ]; then
  for op in gather scatter; do
    timeout -k 3 30 env FERRY_TRACE="$O/trace-$op" "$sb" --op=$op cuda:0 0.5 65536 | grep '^| '
    timeout -k 3 30 python3 "$here/trace_batches.py" "$O/trace-$op"* 2>&1 | head -30
  done
fi
echo "== $(date -u +%T) done"
