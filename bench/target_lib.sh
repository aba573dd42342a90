# SPDX-License-Identifier: Apache-2.0
# target_lib.sh — sourced by the bench scripts that pair a ferry-bench target
# with an initiator (gpu_cost.sh, gpu_trace.sh; tests/bench/same_block.sh).
#
# target_start LOG CMD...: runs CMD (a ferry-bench --mode=target command line,
# env assignments in front allowed through `env`) in the background with its
# output in LOG, waits until it says "target ready" (30 s at most, whatever
# the log level prints before) and sets TARGET_PID and TARGET_SEG (the
# segment to open; empty if it never got ready).
# target_stop: SIGINT, so the target prints its cost line into LOG, then waits.
target_start() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  TARGET_PID=$!
  for _ in $(seq 300); do grep -q "target ready" "$log" && break; sleep 0.1; done
  TARGET_SEG=$(sed -n 's/.*target ready: segment \([^ ]*\).*/\1/p' "$log")
}
target_stop() {
  kill -INT "$TARGET_PID" 2>/dev/null
  wait "$TARGET_PID" 2>/dev/null
}
