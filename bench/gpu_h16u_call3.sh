#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16u_call3.sh — issue 16 items 3-4, third GPU call: the submitting
# thread's retire (FERRY_STAGING_ISSUER_RETIRE_US=0 before, 300 after)
# alternated twice at WRITE 16 KiB x 128, one thread, 2 s a cell; the
# socket buffers (FERRY_TCP_SOCKBUF: 256 KiB here by default, 0 = the
# kernel's, 2 MiB) for a staged frame; traces before / after / with the
# kernel's buffers.  BUILD=<bundle>, bench scripts in <bundle>/bench.
set -uo pipefail
B=${BUILD:-build-gpu}
export BUILD=$B
here=$B/bench
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
cost() {  # label, then env assignments for gpu_cost.sh
  local label=$1
  shift
  echo "== $(date -u +%T) $label"
  timeout -k 5 60 env TGPU=1 IDLE=0 MEMS=cuda0 THREADS=1 "$@" bash "$here/gpu_cost.sh" 2>&1 |
    grep -v '^|---\|^| memory'
}
for r in 1 2; do
  cost "round $r before" OPS=write SECS=2 BATCHES=128 CELL_ENV=FERRY_STAGING_ISSUER_RETIRE_US=0
  cost "round $r after" OPS=write SECS=2 BATCHES=128
done
cost "after, FERRY_TCP_SOCKBUF=0" SECS=1 BATCHES=128 CELL_ENV=FERRY_TCP_SOCKBUF=0
cost "after, FERRY_TCP_SOCKBUF=2097152" SECS=1 BATCHES=128 CELL_ENV=FERRY_TCP_SOCKBUF=2097152
echo "== $(date -u +%T) traces"
timeout -k 5 60 env SECS=1 THREADS=1 bash "$here/gpu_trace.sh" \
  "before tcp cuda:1 cuda:0 write 16384 FERRY_STAGING_ISSUER_RETIRE_US=0" \
  "after tcp cuda:1 cuda:0 write 16384" \
  "after-sockbuf0 tcp cuda:1 cuda:0 write 16384 FERRY_TCP_SOCKBUF=0" 2>&1 | grep -v '^batch_submit \|^stage_queued\|^copy_queued'
echo "== $(date -u +%T) done"
