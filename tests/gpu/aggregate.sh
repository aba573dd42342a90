#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs on the GPU machine (build with bundle.sh, carry build-gpu): the
# staging paths for 128 blocks of 64 KiB side by side, each next to one
# large pinned D2H / H2D measured in the same process, then the staging
# matrix with device aggregation forced on, data checked.
#   kernel:        the gather/scatter kernel (CUDA's default)
#   per-block:     one cuMemcpy*Async per block
#   batched:       cuMemcpyBatchAsync (CUDA 12.8+ drivers), no kernel
#   aggregate:     D2D of the blocks into a device buffer + one D2H per chunk
#                  (READ: one H2D + D2D scatter), as on NPUs
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${BUILD:-build-gpu}
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
status=0
run() {
  local name=$1; shift
  echo "== $name ($*)"
  env "$@" "$B/staging_bench" cuda:0 1.5 65536 | grep -v '^|---' | tail -1 || status=1
}
echo "| block | gather D2H GB/s | large D2H GB/s | ratio | scatter H2D GB/s | large H2D GB/s | ratio |"
run kernel FERRY_LOG_LEVEL=1
run per-block FERRY_CUDA_GATHER_KERNEL=0 FERRY_CUDA_BATCH_COPY=0
run batched FERRY_CUDA_GATHER_KERNEL=0
run aggregate FERRY_CUDA_GATHER_KERNEL=0 FERRY_STAGING_AGGREGATE=2M
run "aggregate, per-copy D2D" FERRY_CUDA_GATHER_KERNEL=0 FERRY_CUDA_BATCH_COPY=0 FERRY_STAGING_AGGREGATE=2M
run "kernel, 8 MiB chunks" FERRY_STAGING_CHUNK_SIZE=8388608 FERRY_SLICE_SIZE=8388608
run "aggregate, 8 MiB chunks" FERRY_CUDA_GATHER_KERNEL=0 FERRY_STAGING_AGGREGATE=2M FERRY_STAGING_CHUNK_SIZE=8388608 FERRY_SLICE_SIZE=8388608
echo "== staging matrix on cuda:0 with aggregation forced on"
FERRY_TEST_DEVICE=cuda:0 FERRY_CUDA_GATHER_KERNEL=0 FERRY_STAGING_AGGREGATE=2M "$B/tests/test_staging" 2>&1 | tail -4 || status=1
exit $status
