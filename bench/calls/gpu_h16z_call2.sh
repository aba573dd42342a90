#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16z_call2.sh — issue 16 item 1, h16z's second GPU call (one H200, one
# process).  Call 1 found the scatter of 4 KiB x 128 (4 in flight) at
# 0.86 / 0.89 of a large H2D with an H2D launch capped at 32 CTAs
# (FERRY_CUDA_KERNEL_H2D_GRID=32) against 0.78 / 0.78 without a cap.  This
# build makes 32 the default (D); alternated twice against the old
# behaviour (K0: FERRY_CUDA_KERNEL_H2D_GRID=0) and the neighbours 16 and 48:
# scatter 4 / 16 / 64 KiB / 1 MiB x 128 with 4 in flight; D and K0 also one
# at a time, and 1,024 x 16 KiB with 2 in flight and one at a time; the kernel alone
# (bench/h2d_probe.c) D against K0; the gathers once (the knob is H2D's
# only); then the staging matrix on cuda:0 and test_device_cuda with the
# default and with every new H2D knob set.
#   BUILD=build-h16z [OUT=dir] [DRY=1] [SECS=0.25] bash bench/calls/gpu_h16z_call2.sh
# DRY=1 prints the commands instead of running them (no GPU needed).
set -uo pipefail
B=${BUILD:-build-h16z}
S=${SECS:-0.25}
O=${OUT:-/tmp/h16z-out}
mkdir -p "$O"
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
DRY=${DRY:-0}
D="FERRY_LOG_LEVEL=1"
K0="FERRY_CUDA_KERNEL_H2D_GRID=0"
G16="FERRY_CUDA_KERNEL_H2D_GRID=16"
G48="FERRY_CUDA_KERNEL_H2D_GRID=48"
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
echo "## columns: block | gather GB/s | large D2H | ratio | p50 | p99 | scatter GB/s | large H2D | ratio | p50 | p99"
for r in 1 2; do
  for v in K0 D G16 G48; do
    x "round $r $v scatter, 4 in flight" "${!v}" -- "$sb" --op=scatter --depth=4 cuda:0 "$S" 4096 16384 65536 1048576
  done
  for v in K0 D; do
    x "round $r $v scatter, 1 at a time" "${!v}" -- "$sb" --op=scatter cuda:0 "$S" 4096 16384 65536
    x "round $r $v scatter 1024 x 16 KiB, 2 in flight" "${!v}" -- "$sb" --op=scatter --batch=1024 --depth=2 cuda:0 "$S" 16384
    x "round $r $v scatter 1024 x 16 KiB, 1 at a time" "${!v}" -- "$sb" --op=scatter --batch=1024 cuda:0 "$S" 16384
  done
done
for v in K0 D K0 D; do
  x "kernel alone, H2D $v" "${!v}" -- "$hp" cuda:0 "$S" h2d 4096:128:1 4096:128:4 4096:128:8 16384:128:4
done
x "gathers, 4 in flight" "$D" -- "$sb" --op=gather --depth=4 cuda:0 "$S" 4096 16384 65536 1048576
x "gathers, 1 at a time" "$D" -- "$sb" --op=gather cuda:0 "$S" 4096 16384 65536 1048576
x "gather 1024 x 16 KiB, 2 in flight" "$D" -- "$sb" --op=gather --batch=1024 --depth=2 cuda:0 "$S" 16384
x "gather 1024 x 16 KiB, 1 at a time" "$D" -- "$sb" --op=gather --batch=1024 cuda:0 "$S" 16384
ALL="FERRY_CUDA_KERNEL_H2D_THREADS=64 FERRY_CUDA_KERNEL_H2D_TILE=1024 FERRY_CUDA_KERNEL_H2D_GRID=16"
t staging-default "FERRY_TEST_DEVICE=cuda:0" -- "$B/tests/test_staging"
t staging-h2d-shape "FERRY_TEST_DEVICE=cuda:0 $ALL" -- "$B/tests/test_staging"
t device-default "$D" -- "$B/tests/test_device_cuda"
t device-h2d-shape "$ALL" -- "$B/tests/test_device_cuda"
echo "== $(date -u +%T) done"
