#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16w_call2.sh — issue 16 items 3-4, h16w's second GPU call (2 x H200,
# cuda:0 -> tcp loopback -> cuda:1, 16 KiB blocks): the target's ack from
# its copies' completion, FERRY_TCP_ACK_ON_COPY 0 / 1 (a function on the
# stream or the mark) / 2 (the mark only), alternated twice, one thread at
# 128 and 1,024 and four threads at 1,024; a trace of each form; then the
# GPU tests (tests/gpu/run.sh) on this build.  BUILD=<bundle> with the bench
# scripts in <bundle>/bench; OUT for run.sh's files.
. "$(dirname "$0")/gpu_call_lib.sh"
COST_DEFAULTS=(THREADS=1 MEMS=cuda0 OPS=write)
echo "== $(date -u +%T) start"
for r in 1 2; do
  for m in 0 1 2; do
    cost "round $r FERRY_TCP_ACK_ON_COPY=$m" SECS=2 BATCHES="128 1024" CELL_ENV=FERRY_TCP_ACK_ON_COPY=$m
  done
done
for m in 0 1 2; do
  cost "4 threads FERRY_TCP_ACK_ON_COPY=$m" SECS=1 BATCHES=1024 THREADS=4 CELL_ENV=FERRY_TCP_ACK_ON_COPY=$m
done
traces 40 \
  "ack0 tcp cuda:1 cuda:0 write 16384 FERRY_TCP_ACK_ON_COPY=0" \
  "ack2 tcp cuda:1 cuda:0 write 16384 FERRY_TCP_ACK_ON_COPY=2"
echo "== $(date -u +%T) GPU tests"
timeout -k 5 240 bash tests/gpu/run.sh 2>&1 | tail -80
echo "run.sh rc ${PIPESTATUS[0]}"
echo "== $(date -u +%T) done"
