#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16y_call2.sh — issue 16 item 1, h16y's second GPU call (one H200, one
# process: staging_bench).  Call 1 (docs/BENCHMARKS.md, h16y) found the copy
# engine faster than the SMs at reading host memory only in calls of
# several MiB; so scatters grouped by bytes, on the kernel or the engine,
# against the defaults, alternated twice (K RG RGC RG2C, K RG RGC RG2C):
#   K     the defaults (a scatter group: one chunk's bytes, the kernel)
#   RG    FERRY_STAGING_READ_GROUP_BYTES=4194304: scatter groups of up to 4 MiB
#         (128 copies), the kernel
#   RGC   RG + FERRY_CUDA_KERNEL_H2D_CALL_MIN=2097152: such calls of >= 64 KiB
#         blocks on the copy engine (cuMemcpyBatchAsync)
#   RG2C  the same with 2 MiB groups
# then the gather of 4 / 16 KiB with a round's first group of two frames
# (FERRY_STAGING_GROUP_FIRST=2: one launch for a 128 x 4 KiB batch, not two)
# against the defaults, alternated twice; then the staging matrix on cuda:0
# and the device tests under the candidates; then a trace of one 64 KiB
# scatter batch at a time under RGC.
#   BUILD=build-h16y [OUT=dir] [DRY=1] [SECS=0.3] bash bench/calls/gpu_h16y_call2.sh
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
RG="FERRY_STAGING_READ_GROUP_BYTES=4194304"
RGC="$RG FERRY_CUDA_KERNEL_H2D_CALL_MIN=2097152"
RG2C="FERRY_STAGING_READ_GROUP_BYTES=2097152 FERRY_CUDA_KERNEL_H2D_CALL_MIN=2097152"
GF2="FERRY_STAGING_GROUP_FIRST=2"
x() {
  local label=$1 envs=$2
  shift 3
  echo "== $(date -u +%T) $label [$envs] $*"
  [ "$DRY" = 1 ] && return
  # shellcheck disable=SC2086
  timeout -k 3 40 env $envs "$@" 2>&1 | grep -E '^\| [0-9]+ KiB|rror|fail|FAIL'
}
# t LABEL ENV -- test command: its result lines and return code
t() {
  local label=$1 envs=$2
  shift 3
  echo "== $(date -u +%T) test $label [$envs] $*"
  [ "$DRY" = 1 ] && return
  # shellcheck disable=SC2086
  timeout -k 3 70 env $envs "$@" > "$O/test-$label.txt" 2>&1
  echo "rc $?"
  grep -E '^\[ +(PASSED|FAILED|ERROR|SKIPPED) |^\[  FAILED|SKIPPED' "$O/test-$label.txt" | head -12
}
sb="$B/staging_bench"
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -2 | tr '\n' ' ') cpus $(nproc)"
echo "## columns: block | gather GB/s | large D2H | ratio | p50 | p99 | scatter GB/s | large H2D | ratio | p50 | p99"
for r in 1 2; do
  for v in K RG RGC RG2C; do
    x "round $r $v 4 in flight" "${!v}" -- "$sb" --op=scatter --depth=4 cuda:0 "$S" 4096 16384 65536 1048576
    x "round $r $v 1 in flight" "${!v}" -- "$sb" --op=scatter cuda:0 "$S" 4096 16384 65536 1048576
    x "round $r $v 1024, 2 in flight" "${!v}" -- "$sb" --op=scatter --batch=1024 --depth=2 cuda:0 "$S" 16384
    x "round $r $v 1024, 1 in flight" "${!v}" -- "$sb" --op=scatter --batch=1024 cuda:0 "$S" 16384
  done
  for v in K GF2; do
    x "round $r $v gather, 4 in flight" "${!v}" -- "$sb" --op=gather --depth=4 cuda:0 "$S" 4096 16384
    x "round $r $v gather, 1 in flight" "${!v}" -- "$sb" --op=gather cuda:0 "$S" 4096 16384
  done
done
t staging-rgc-gf2 "FERRY_TEST_DEVICE=cuda:0 $RGC $GF2" -- "$B/tests/test_staging"
t device-callmin "FERRY_CUDA_KERNEL_H2D_CALL_MIN=2097152" -- "$B/tests/test_device_cuda"
t staging-rg "FERRY_TEST_DEVICE=cuda:0 $RG" -- "$B/tests/test_staging"
echo "== $(date -u +%T) trace, one 64 KiB scatter batch at a time, RGC"
if [ "$DRY" != 1 ]; then
  # shellcheck disable=SC2086
  timeout -k 3 30 env $RGC FERRY_TRACE="$O/trace-rgc" "$sb" --op=scatter cuda:0 0.5 65536 | grep '^| [0-9]'
  timeout -k 3 30 python3 "$here/trace_batches.py" "$O/trace-rgc"* 2>&1 | head -12
fi
echo "== $(date -u +%T) done"
