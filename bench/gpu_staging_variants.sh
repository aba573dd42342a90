#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_staging_variants.sh — issue 16 item 1 in one GPU call: the staging
# pipeline alone (staging_bench) under each launch shape of the CUDA
# gather/scatter kernel (FERRY_CUDA_KERNEL_*) and each staging group size
# (FERRY_STAGING_GROUP), every row next to one large pinned copy of the same
# process; the defaults first and again last (drift); a FERRY_TRACE timeline
# of a 1,024 x 16 KiB batch (bench/trace_batches.py); then the CUDA device
# tests and the staging matrix with the defaults and under a non-default shape
# (the 8-load path, large groups, H2D on the copy engine).  Each step has a
# timeout; the whole takes about 80-120 s at SECS=0.4.  Round 1 tries one
# knob at a time; round 2 (the default) the 4 KiB tile against the old 16 KiB
# and what might add to it; round 3 the two alternating, with a look at what
# else runs on the machine.  Round 4 (h16s2): one launch per batch (the
# 1,024-copy kernel, FERRY_STAGING_GROUP=16 with a first group of 2) against
# the earlier defaults (FERRY_CUDA_KERNEL_COPIES=128 FERRY_STAGING_GROUP=2),
# and smaller tiles for 4 KiB scatter; its tests add the 128-copy kernel and
# the staging matrix with the target on cuda:1.  Round 5: scatter through a
# device buffer (FERRY_STAGING_AGGREGATE=2M FERRY_CUDA_KERNEL_H2D_MAX=0) against
# the kernel reading host memory, and the staging matrix that way.  Round 6:
# the worker's early wake-up, A/B against $BUILD/staging_bench_A (a build
# without it), with pauses between batches; the tests on one and two GPUs.
#
# Round 7 (h16v): the pool's sizing for 1,024-block batches (16 frames in
# flight, as 16 x 2 MiB chunks held, against 32 x 1 MiB: the same pinned
# bytes, frames being at most the 1 MiB slice), at 1, 2 and 4 batches in flight;
# H2D through sm_90 bulk copies (FERRY_CUDA_KERNEL_BULK=1) against 16-byte
# loads, alternating; the copy engine for H2D of 16 KiB blocks; then the
# device tests and the staging matrix with bulk copies and the new pool, and
# GPU to GPU over shm at 64 KiB (item 2, bench/gpu_shm_pairs.sh) if there
# is time left (LIMIT, seconds: 185).
#
#   BUILD=build-gpu [SECS=0.4] [OUT=dir] bench/gpu_staging_variants.sh [1|2|3|4|5|6|7]
set -uo pipefail
B=${BUILD:-build-gpu}
S=${SECS:-0.4}
OUT=${OUT:-/tmp/ferry-variants}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
sb="$B/staging_bench"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
nproc | sed 's/^/cpus: /'
date -u
t0=$(date +%s)

# v LABEL [VAR=value...] -- staging_bench arguments: the table rows only
v() {
  local label=$1 envs=()
  shift
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  echo "### $label [${envs[*]}] $*"
  timeout 60 env "${envs[@]}" "$sb" "$@" 2>&1 | grep -E '^\| [0-9]+ KiB|rror|fail'
}
# the rows of the goal: 128 x 4 in flight at 4/16/64 KiB, and 1,024 x 16 KiB
goal() {
  local label=$1
  shift
  v "$label" "$@" -- --depth=4 cuda:0 "$S" 4096 16384 65536
  v "$label" "$@" -- --batch=1024 cuda:0 "$S" 16384
}

echo "## table columns: block | gather GB/s | large D2H | ratio | p50 | p99 | scatter GB/s | large H2D | ratio | p50 | p99"
if [ "${1:-2}" = 7 ]; then
  limit=${LIMIT:-185}
  left() { [ $(( $(date +%s) - t0 )) -lt "$1" ]; }
  old=(FERRY_STAGING_CHUNKS=16 FERRY_STAGING_CHUNK_SIZE=1048576)   # 16 frames in flight, as before
  new=(FERRY_LOG_LEVEL=1)                                           # the default: 16 x 2 MiB cut into 32 x 1 MiB
  oldbench=(FERRY_STAGING_CHUNKS=16 FERRY_STAGING_CHUNK_SIZE=2097152 FERRY_SLICE_SIZE=2097152) # 2 MiB frames
  bulk=(FERRY_CUDA_KERNEL_BULK=1)
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader
  echo "### bulk copies, correctness first: test_device_cuda ${bulk[*]}"
  timeout 40 env "${bulk[@]}" FERRY_LOG_LEVEL=3 "$B/tests/test_device_cuda" > "$OUT/device-bulk.txt" 2>&1
  echo "rc $?"; grep -E 'bulk|^\[ +(FAILED|PASSED|ERROR) ' "$OUT/device-bulk.txt" | sort | uniq -c | head -8
  for d in 1 2 4; do
    v "old-pool d$d" "${old[@]}" -- --batch=1024 --depth=$d cuda:0 "$S" 16384
    v "new-pool d$d" "${new[@]}" -- --batch=1024 --depth=$d cuda:0 "$S" 16384
  done
  v "pool-64 d4" FERRY_STAGING_CHUNKS=32 -- --batch=1024 --depth=4 cuda:0 "$S" 16384
  v "old-bench 128" "${oldbench[@]}" -- --depth=4 cuda:0 "$S" 4096 16384 65536
  v "new-pool 128" "${new[@]}" -- --depth=4 cuda:0 "$S" 4096 16384 65536
  v "old-bench 1 in flight" "${oldbench[@]}" -- cuda:0 "$S" 16384 65536 1048576
  v "new-pool 1 in flight" "${new[@]}" -- cuda:0 "$S" 16384 65536 1048576
  sc() {
    local label=$1
    shift
    v "$label" "$@" -- --op=scatter --depth=4 cuda:0 "$S" 4096 16384 65536
    v "$label" "$@" -- --op=scatter --batch=1024 cuda:0 "$S" 16384
  }
  sc "scatter loads" "${new[@]}"
  sc "scatter bulk" "${new[@]}" "${bulk[@]}"
  sc "scatter bulk tile16k" "${new[@]}" "${bulk[@]}" FERRY_CUDA_KERNEL_TILE=16384
  sc "scatter loads again" "${new[@]}"
  sc "scatter bulk again" "${new[@]}" "${bulk[@]}"
  left 120 && sc "scatter bulk ctas8" "${new[@]}" "${bulk[@]}" FERRY_CUDA_KERNEL_CTAS=8
  left 125 && sc "scatter copy engine >8k" "${new[@]}" FERRY_CUDA_KERNEL_H2D_MAX=8192
  left 130 && v "scatter 4k first2" "${new[@]}" FERRY_STAGING_GROUP_FIRST=2 -- --op=scatter --depth=4 cuda:0 "$S" 4096
  echo "## variants took $(( $(date +%s) - t0 )) s"
  st=0
  echo "### test_staging cuda:0 -> cuda:1, ${new[*]} ${bulk[*]}"
  timeout 40 env "${new[@]}" "${bulk[@]}" FERRY_TEST_DEVICE=cuda:0 FERRY_TEST_TARGET_DEVICE=cuda:1 \
    "$B/tests/test_staging" > "$OUT/staging-2gpu.txt" 2>&1 || st=1
  grep -E '^\[ +(FAILED|PASSED|ERROR) ' "$OUT/staging-2gpu.txt"
  if left $((limit - 40)) && [ -n "${SHM:-}" ]; then
    echo "### item 2: shm GPU to GPU, 64 KiB, 4 threads"
    SECS=1 THREADS=4 BLOCKS=65536 timeout 60 bash "$here/gpu_shm_pairs.sh" "new=$SHM" "lanes1=$SHM:FERRY_SHM_LANE_STREAMS=1" 2>&1 |
      cut -c1-160
  fi
  echo "## all done at $(( $(date +%s) - t0 )) s, status $st"
  exit $st
elif [ "${1:-2}" = 1 ]; then
  # round 1 (commit 31b6713, whose default tile was 16 KiB): one knob at a time
  old=(FERRY_CUDA_KERNEL_TILE=16384)
  v base "${old[@]}" -- cuda:0 "$S" 4096 16384 65536 1048576
  goal base "${old[@]}"
  v h2d-engine-64k "${old[@]}" FERRY_CUDA_KERNEL_H2D_MAX=32768 -- --op=scatter cuda:0 "$S" 65536
  v h2d-engine-64k "${old[@]}" FERRY_CUDA_KERNEL_H2D_MAX=32768 -- --op=scatter --depth=4 cuda:0 "$S" 65536
  v h2d-engine-64k "${old[@]}" FERRY_CUDA_KERNEL_H2D_MAX=32768 -- --op=scatter --batch=1024 cuda:0 "$S" 65536
  v base "${old[@]}" -- --op=scatter --batch=1024 cuda:0 "$S" 65536
  goal ctas8 "${old[@]}" FERRY_CUDA_KERNEL_CTAS=8
  goal tile4k FERRY_CUDA_KERNEL_TILE=4096
  v tile32k-loads8 FERRY_CUDA_KERNEL_TILE=32768 FERRY_CUDA_KERNEL_LOADS=8 -- --depth=4 cuda:0 "$S" 65536
  goal threads128-loads8 "${old[@]}" FERRY_CUDA_KERNEL_THREADS=128 FERRY_CUDA_KERNEL_LOADS=8
  goal threads128 "${old[@]}" FERRY_CUDA_KERNEL_THREADS=128
  goal group1 "${old[@]}" FERRY_STAGING_GROUP=1
  goal group4 "${old[@]}" FERRY_STAGING_GROUP=4
  v group16 "${old[@]}" FERRY_STAGING_GROUP=16 -- --batch=1024 cuda:0 "$S" 16384
  goal base-again "${old[@]}"
elif [ "${1:-2}" = 4 ]; then
  # round 4: one launch per batch against the earlier defaults
  old=(FERRY_CUDA_KERNEL_COPIES=128 FERRY_STAGING_GROUP=2)
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader
  v before "${old[@]}" -- cuda:0 "$S" 4096 16384 65536 1048576
  v after -- cuda:0 "$S" 4096 16384 65536 1048576
  goal before "${old[@]}"
  goal after
  goal after+first16 FERRY_STAGING_GROUP_FIRST=16
  goal group16+copies128 FERRY_STAGING_GROUP=16 FERRY_CUDA_KERNEL_COPIES=128
  goal after+tile2k+threads128 FERRY_CUDA_KERNEL_TILE=2048 FERRY_CUDA_KERNEL_THREADS=128
  goal after+tile1k+threads64 FERRY_CUDA_KERNEL_TILE=1024 FERRY_CUDA_KERNEL_THREADS=64
  goal after-again
  goal before-again "${old[@]}"
  v after -- --batch=1024 cuda:0 "$S" 4096 65536
  v before "${old[@]}" -- --batch=1024 cuda:0 "$S" 4096 65536
elif [ "${1:-2}" = 6 ]; then
  # round 6: the worker woken when copies are taken, not after their launch:
  # $B/staging_bench_A (built without it) against $B/staging_bench, one batch
  # at a time with a 200 us pause between batches (the worker sleeps there)
  sbB=$sb
  ab() {
    local label=$1
    shift
    sb="$B/staging_bench_A"
    v "A:$label" -- "$@"
    sb=$sbB
    v "B:$label" -- "$@"
  }
  ab gap200 --gap=200 cuda:0 "$S" 16384 65536
  ab gap200-1024 --gap=200 --batch=1024 cuda:0 "$S" 16384
  ab gap200-again --gap=200 cuda:0 "$S" 16384 65536
  ab nogap cuda:0 "$S" 16384
  ab nogap-1024 --batch=1024 cuda:0 "$S" 16384
  echo "## variants took $(( $(date +%s) - t0 )) s"
  st=0
  echo "### test_device_cuda, defaults"
  timeout 40 "$B/tests/test_device_cuda" 2>&1 | tail -1 || st=1
  echo "### test_staging cuda:0"
  timeout 40 env FERRY_TEST_DEVICE=cuda:0 "$B/tests/test_staging" > "$OUT/staging-1gpu.txt" 2>&1 || st=1
  grep -E '^\[ +(FAILED|PASSED|ERROR) ' "$OUT/staging-1gpu.txt"
  echo "### test_staging cuda:0 -> cuda:1"
  timeout 40 env FERRY_TEST_DEVICE=cuda:0 FERRY_TEST_TARGET_DEVICE=cuda:1 "$B/tests/test_staging" \
    > "$OUT/staging-2gpu.txt" 2>&1 || st=1
  grep -E '^\[ +(FAILED|PASSED|ERROR) ' "$OUT/staging-2gpu.txt"
  echo "## all done at $(( $(date +%s) - t0 )) s, status $st"
  exit $st
elif [ "${1:-2}" = 5 ]; then
  # round 5: scatter through a device buffer (one copy-engine H2D of the
  # chunk, then the kernel scatters it in HBM) against the kernel reading
  # host memory; then the staging matrix that way, and stop
  agg=(FERRY_STAGING_AGGREGATE=2M FERRY_CUDA_KERNEL_H2D_MAX=0)
  sg() {
    local label=$1
    shift
    v "$label" "$@" -- --op=scatter --depth=4 cuda:0 "$S" 4096 16384 65536
    v "$label" "$@" -- --op=scatter --batch=1024 cuda:0 "$S" 16384 65536
  }
  sg base
  sg agg "${agg[@]}"
  v base -- --op=scatter cuda:0 "$S" 16384 65536
  v agg "${agg[@]}" -- --op=scatter cuda:0 "$S" 16384 65536
  sg agg-again "${agg[@]}"
  sg base-again
  echo "## variants took $(( $(date +%s) - t0 )) s"
  echo "### test_staging cuda:0, ${agg[*]}"
  timeout 60 env "${agg[@]}" FERRY_TEST_DEVICE=cuda:0 "$B/tests/test_staging" > "$OUT/staging-agg.txt" 2>&1
  st=$?
  grep -E '^\[ +(OK|FAILED|PASSED|SKIPPED|ERROR) ' "$OUT/staging-agg.txt"
  echo "## all done at $(( $(date +%s) - t0 )) s, status $st"
  exit $st
elif [ "${1:-2}" = 3 ]; then
  # round 3: before / after again, alternating, with what else runs on the GPUs
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader
  ps -eo pid,pcpu,etime,comm --sort=-pcpu | head -6
  goal before FERRY_CUDA_KERNEL_TILE=16384
  goal after
  goal after+group4 FERRY_STAGING_GROUP=4
  goal after-again
  goal before-again FERRY_CUDA_KERNEL_TILE=16384
else
  # round 2: the 4 KiB tile (the default now) against the old 16 KiB, and
  # what might add to it
  v before FERRY_CUDA_KERNEL_TILE=16384 -- cuda:0 "$S" 4096 16384 65536 1048576
  goal before FERRY_CUDA_KERNEL_TILE=16384
  v after -- cuda:0 "$S" 4096 16384 65536 1048576
  goal after
  v after -- --batch=1024 cuda:0 "$S" 65536
  goal after+group4 FERRY_STAGING_GROUP=4
  goal after+threads128 FERRY_CUDA_KERNEL_THREADS=128
  goal tile2k+threads128 FERRY_CUDA_KERNEL_TILE=2048 FERRY_CUDA_KERNEL_THREADS=128
  goal tile1k+threads64 FERRY_CUDA_KERNEL_TILE=1024 FERRY_CUDA_KERNEL_THREADS=64
  goal after-again
fi
echo "## variants took $(( $(date +%s) - t0 )) s"

for op in gather scatter; do
  echo "### trace: 1,024 x 16 KiB, $op, defaults"
  rm -f "$OUT"/tr.*
  FERRY_TRACE="$OUT/tr.%d" timeout 30 "$sb" --op=$op --batch=1024 cuda:0 "$S" 16384 | grep -E '^\| [0-9]'
  timeout 30 python3 "$here/trace_batches.py" "$OUT"/tr.* 2>&1 | head -12
  rm -f "$OUT"/tr.*
done
echo "## traces done at $(( $(date +%s) - t0 )) s"

status=0
odd=(FERRY_CUDA_KERNEL_THREADS=64 FERRY_CUDA_KERNEL_LOADS=8 FERRY_CUDA_KERNEL_TILE=1024)
echo "### test_device_cuda, defaults"
timeout 60 "$B/tests/test_device_cuda" 2>&1 | tail -3 || status=1
echo "### test_device_cuda, ${odd[*]}"
timeout 60 env "${odd[@]}" "$B/tests/test_device_cuda" 2>&1 | tail -3 || status=1
if [ "${1:-2}" = 4 ]; then
  echo "### test_device_cuda, FERRY_CUDA_KERNEL_COPIES=128"
  timeout 60 env FERRY_CUDA_KERNEL_COPIES=128 "$B/tests/test_device_cuda" 2>&1 | tail -3 || status=1
fi
# test_staging starts $B/tests/ferry_test_target for its target side
echo "### test_staging cuda:0, defaults"
timeout 60 env FERRY_TEST_DEVICE=cuda:0 "$B/tests/test_staging" > "$OUT/staging-default.txt" 2>&1 || status=1
grep -E '^\[ +(OK|FAILED|PASSED|SKIPPED|ERROR) ' "$OUT/staging-default.txt"
odd2=(FERRY_CUDA_KERNEL_THREADS=128 FERRY_CUDA_KERNEL_LOADS=8 FERRY_CUDA_KERNEL_TILE=2048 FERRY_STAGING_GROUP=4
      FERRY_CUDA_KERNEL_H2D_MAX=32768)
echo "### test_staging cuda:0, ${odd2[*]}"
timeout 60 env "${odd2[@]}" FERRY_TEST_DEVICE=cuda:0 "$B/tests/test_staging" > "$OUT/staging-odd.txt" 2>&1 || status=1
grep -E '^\[ +(OK|FAILED|PASSED|SKIPPED|ERROR) ' "$OUT/staging-odd.txt"
if [ "${1:-2}" = 4 ] && [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  echo "### test_staging cuda:0 -> cuda:1, defaults"
  timeout 60 env FERRY_TEST_DEVICE=cuda:0 FERRY_TEST_TARGET_DEVICE=cuda:1 "$B/tests/test_staging" \
    > "$OUT/staging-2gpu.txt" 2>&1 || status=1
  grep -E '^\[ +(OK|FAILED|PASSED|SKIPPED|ERROR) ' "$OUT/staging-2gpu.txt"
fi
echo "## all done at $(( $(date +%s) - t0 )) s, status $status"
exit $status
