#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16w_call3.sh — issue 16 item 4, h16w's third GPU call (2 x H200,
# cuda:0 -> tcp loopback -> cuda:1, 16 KiB blocks, one thread): knobs that
# shape a staged batch's critical path, each next to the default (first and
# last): frames a submit is cut into (FERRY_TCP_SPREAD), gathers on a mark
# stream (FERRY_STAGING_MARK_STREAMS), the target's copy pipe
# (FERRY_TCP_DEVICE_PIPE), the first copy group (FERRY_STAGING_GROUP_FIRST).
# BUILD=<bundle> with the bench scripts in <bundle>/bench.
. "$(dirname "$0")/gpu_call_lib.sh"
COST_DEFAULTS=(THREADS=1 MEMS=cuda0)
run3() {  # label, CELL_ENV: WRITE 128 and 1,024, READ 128, 2 s cells
  cost "$1" SECS=2 OPS=write BATCHES="128 1024" CELL_ENV="$2"
  cost "$1" SECS=2 OPS=read BATCHES=128 CELL_ENV="$2"
}
run3 default ""
run3 spread2 FERRY_TCP_SPREAD=2
run3 spread8 FERRY_TCP_SPREAD=8
run3 marks1 FERRY_STAGING_MARK_STREAMS=1
run3 pipe128k FERRY_TCP_DEVICE_PIPE=131072
run3 pipe512k FERRY_TCP_DEVICE_PIPE=524288
run3 groupfirst2 FERRY_STAGING_GROUP_FIRST=2
run3 default ""
echo "== $(date -u +%T) done"
