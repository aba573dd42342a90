#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16w_call1.sh — issue 16 items 3-4, h16w's first GPU call (2 x H200,
# initiator cuda:0 -> tcp loopback -> target cuda:1, 16 KiB blocks):
# item 4's host reference hot and with --rotate (cold), side by side; the
# first staged frame written inline (FERRY_STAGING_INLINE_FIRST 0 / 1)
# alternated; the staged frame size (FERRY_SLICE_SIZE 128 KiB - 1 MiB),
# alternated with the default; the target's ack from its copies' completion
# (FERRY_TCP_ACK_ON_COPY 0 / 1) alternated; the full gpu_cost.sh table (1
# and 4 threads) with the idle engine's CPU; traces.
# BUILD=<bundle> with the bench scripts in <bundle>/bench.
. "$(dirname "$0")/gpu_call_lib.sh"
COST_DEFAULTS=(THREADS=1)
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name --format=csv,noheader | head -2 | tr '\n' ' ')"
timeout -k 5 30 "$B/staging_bench" cuda:0 0.5 16384 2>&1 | tail -3
echo "== $(date -u +%T) full table, defaults (item 4's hot host reference: its cpu rows)"
timeout -k 5 150 env TGPU=1 SECS=1 IDLE=10 MEMS="cpu cuda0" BATCHES="128 1024" THREADS="1 4" bash "$here/gpu_cost.sh" 2>&1
# item 4's cold reference: host memory with --rotate, right after
cost "host --rotate" MEMS=cpu SECS=1 FB_ARGS=--rotate
# the first staged frame inline, alternated (2 s cells)
for r in 1 2; do
  cost "round $r inline off" MEMS=cuda0 OPS=write SECS=2 BATCHES="128 1024" CELL_ENV=FERRY_STAGING_INLINE_FIRST=0
  cost "round $r inline on" MEMS=cuda0 OPS=write SECS=2 BATCHES="128 1024" CELL_ENV=FERRY_STAGING_INLINE_FIRST=1
done
# the target's ack from its copies' completion, alternated (2 s cells), and once with 4 threads
for r in 1 2; do
  cost "round $r ack-on-copy off" MEMS=cuda0 OPS=write SECS=2 BATCHES="128 1024" CELL_ENV=FERRY_TCP_ACK_ON_COPY=0
  cost "round $r ack-on-copy on" MEMS=cuda0 OPS=write SECS=2 BATCHES="128 1024" CELL_ENV=FERRY_TCP_ACK_ON_COPY=1
done
cost "4 threads ack-on-copy off" MEMS=cuda0 OPS=write SECS=1 BATCHES=1024 THREADS=4 CELL_ENV=FERRY_TCP_ACK_ON_COPY=0
cost "4 threads ack-on-copy on" MEMS=cuda0 OPS=write SECS=1 BATCHES=1024 THREADS=4 CELL_ENV=FERRY_TCP_ACK_ON_COPY=1
# the staged frame size: FERRY_SLICE_SIZE (default 1 MiB: frames of 512 KiB at 128 blocks, 1 MiB at 1,024),
# the default first and last
cost "slice default" MEMS=cuda0 SECS=1
for sz in 131072 262144 524288; do
  cost "slice $sz" MEMS=cuda0 SECS=1 CELL_ENV=FERRY_SLICE_SIZE=$sz
done
cost "slice default" MEMS=cuda0 SECS=1
traces 40 \
  "inline-off tcp cuda:1 cuda:0 write 16384 FERRY_STAGING_INLINE_FIRST=0" \
  "inline-on tcp cuda:1 cuda:0 write 16384 FERRY_STAGING_INLINE_FIRST=1" \
  "ack-on-copy tcp cuda:1 cuda:0 write 16384 FERRY_TCP_ACK_ON_COPY=1"
echo "== $(date -u +%T) done"
