#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16u_call3.sh — issue 16 items 3-4, third GPU call: the submitting
# thread's retire (FERRY_STAGING_ISSUER_RETIRE_US=0 before, 300 after)
# alternated twice at WRITE 16 KiB x 128, one thread, 2 s a cell; the
# socket buffers (FERRY_TCP_SOCKBUF: 256 KiB here by default, 0 = the
# kernel's, 2 MiB) for a staged frame; traces before / after / with the
# kernel's buffers.  BUILD=<bundle>, bench scripts in <bundle>/bench.
. "$(dirname "$0")/gpu_call_lib.sh"
COST_TIMEOUT=60
COST_DEFAULTS=(MEMS=cuda0 THREADS=1)
for r in 1 2; do
  cost "round $r before" OPS=write SECS=2 BATCHES=128 CELL_ENV=FERRY_STAGING_ISSUER_RETIRE_US=0
  cost "round $r after" OPS=write SECS=2 BATCHES=128
done
cost "after, FERRY_TCP_SOCKBUF=0" SECS=1 BATCHES=128 CELL_ENV=FERRY_TCP_SOCKBUF=0
cost "after, FERRY_TCP_SOCKBUF=2097152" SECS=1 BATCHES=128 CELL_ENV=FERRY_TCP_SOCKBUF=2097152
traces 60 \
  "before tcp cuda:1 cuda:0 write 16384 FERRY_STAGING_ISSUER_RETIRE_US=0" \
  "after tcp cuda:1 cuda:0 write 16384" \
  "after-sockbuf0 tcp cuda:1 cuda:0 write 16384 FERRY_TCP_SOCKBUF=0"
echo "== $(date -u +%T) done"
