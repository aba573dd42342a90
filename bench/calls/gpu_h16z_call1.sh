#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16z_call1.sh — issue 16 item 1's last cell, scatter 4 KiB (one H200,
# one process).  Why does a 128 x 4 KiB scatter batch stay at ~0.77 of a
# large H2D where the gather of the same batch reaches 0.91?
# (1) The kernel alone (bench/h2d_probe.c: calls of 128 x 4 KiB, N streams
#     two calls queued each), H2D against D2H: the kernel or the pipeline?
# (2) A trace of 4 KiB x 128 with 4 in flight, gather and scatter
#     (bench/trace_batches.py): submit -> launch returned -> retired.
# (3) The H2D launch's own shape (new FERRY_CUDA_KERNEL_H2D_THREADS / _TILE /
#     _GRID) and a first scatter group of one frame, alternated twice
#     against the defaults (D V1 V2 ... D V1 V2 ...): scatter 4 / 16 / 64 KiB
#     / 1 MiB x 128, 4 in flight and one at a time, 1,024 x 16 KiB.
# (4) gather of 1,024 x 16 KiB, 2 in flight; both, one at a time.
# (5) the staging matrix on cuda:0 and test_device_cuda with the new knobs set.
#   BUILD=build-h16z [OUT=dir] [DRY=1] [SECS=0.3] bash bench/calls/gpu_h16z_call1.sh
# DRY=1 prints the commands instead of running them (no GPU needed).
set -uo pipefail
B=${BUILD:-build-h16z}
S=${SECS:-0.25}
O=${OUT:-/tmp/h16z-out}
mkdir -p "$O"
here=$(cd "$(dirname "$0")/.." && pwd)   # bench/ (this script lies in bench/calls/)
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
DRY=${DRY:-0}
D="FERRY_LOG_LEVEL=1"
T64="FERRY_CUDA_KERNEL_H2D_THREADS=64"
T64K1="FERRY_CUDA_KERNEL_H2D_THREADS=64 FERRY_CUDA_KERNEL_H2D_TILE=1024"
T128K2="FERRY_CUDA_KERNEL_H2D_THREADS=128 FERRY_CUDA_KERNEL_H2D_TILE=2048"
T32K1="FERRY_CUDA_KERNEL_H2D_THREADS=32 FERRY_CUDA_KERNEL_H2D_TILE=1024"
G64="FERRY_CUDA_KERNEL_H2D_GRID=64"
G32="FERRY_CUDA_KERNEL_H2D_GRID=32"
FB="FERRY_STAGING_READ_GROUP_FIRST_BYTES=262144"
x() {
  local label=$1 envs=$2
  shift 3
  echo "== $(date -u +%T) $label [$envs] $*"
  [ "$DRY" = 1 ] && return
  # shellcheck disable=SC2086
  timeout -k 3 40 env $envs "$@" 2>&1 | grep -E '^\| [0-9]+ KiB|^(h2d|d2h) S=|^# (h2d|d2h|large)|rror|fail|FAIL'
}
# t LABEL ENV -- test command: its result lines and return code
t() {
  local label=$1 envs=$2
  shift 3
  echo "== $(date -u +%T) test $label [$envs] $*"
  [ "$DRY" = 1 ] && return
  # shellcheck disable=SC2086
  timeout -k 3 60 env $envs "$@" > "$O/test-$label.txt" 2>&1
  echo "rc $?"
  grep -E '^\[ +(PASSED|FAILED|ERROR|SKIPPED) |^\[  FAILED|SKIPPED' "$O/test-$label.txt" | head -12
}
sb="$B/staging_bench"
hp="$B/h2d_probe"
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -2 | tr '\n' ' ') cpus $(nproc)"
x "kernel alone, H2D" "$D" -- "$hp" cuda:0 "$S" h2d 4096:128:1 4096:128:2 4096:128:4 4096:128:8 16384:128:4 65536:32:4
x "kernel alone, D2H" "$D" -- "$hp" cuda:0 "$S" d2h 4096:128:1 4096:128:4 16384:128:4
x "kernel alone, H2D T64" "$T64" -- "$hp" cuda:0 "$S" h2d 4096:128:1 4096:128:4 16384:128:4
echo "## columns: block | gather GB/s | large D2H | ratio | p50 | p99 | scatter GB/s | large H2D | ratio | p50 | p99"
for r in 1 2; do
  for v in D T64 T64K1 T128K2 T32K1 G64 G32 FB; do
    x "round $r $v scatter, 4 in flight" "${!v}" -- "$sb" --op=scatter --depth=4 cuda:0 "$S" 4096 16384 65536 1048576
  done
  x "round $r D gather, 4 in flight" "$D" -- "$sb" --op=gather --depth=4 cuda:0 "$S" 4096 16384
  for v in D T64 T64K1 G64 FB; do
    x "round $r $v scatter, 1 at a time" "${!v}" -- "$sb" --op=scatter cuda:0 "$S" 4096 16384 65536 1048576
  done
  for v in D T64 T64K1 G64; do
    x "round $r $v scatter 1024 x 16 KiB, 2 in flight" "${!v}" -- "$sb" --op=scatter --batch=1024 --depth=2 cuda:0 "$S" 16384
  done
done
for op in gather scatter; do
  echo "== $(date -u +%T) trace, 4 KiB x 128, 4 in flight, $op, defaults"
  if [ "$DRY" != 1 ]; then
    timeout -k 3 30 env FERRY_TRACE="$O/trace-$op" "$sb" --op=$op --depth=4 cuda:0 0.25 4096 | grep '^| [0-9]'
    timeout -k 3 30 python3 "$here/trace_batches.py" "$O/trace-$op"* > "$O/trace-$op.txt" 2>&1
    head -16 "$O/trace-$op.txt"
  fi
done
for r in 1 2; do
  x "round $r D gather 1024 x 16 KiB, 2 in flight" "$D" -- "$sb" --op=gather --batch=1024 --depth=2 cuda:0 "$S" 16384
  x "round $r D 1024 x 16 KiB, 1 at a time" "$D" -- "$sb" --batch=1024 cuda:0 "$S" 16384
done
# the new H2D shape knobs all off their defaults: the bytes still land
ALL="FERRY_CUDA_KERNEL_H2D_THREADS=64 FERRY_CUDA_KERNEL_H2D_TILE=1024 FERRY_CUDA_KERNEL_H2D_GRID=32"
t staging-h2d-shape "FERRY_TEST_DEVICE=cuda:0 $ALL" -- "$B/tests/test_staging"
t device-h2d-shape "$ALL" -- "$B/tests/test_device_cuda"
echo "== $(date -u +%T) done"
