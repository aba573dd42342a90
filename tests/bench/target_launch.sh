#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# bench/target_lib.sh's target_launch empties a reused log before its job
# starts: the first poll after it never reads an earlier target's "ready"
# line (the cause of tcp_knobs.sh's "Connection refused" under load: the
# initiator was sent to the previous, stopped target).  The poll here comes
# at once after the launch, as a loaded host lets the caller run on before
# the job opens its redirection; 20 rounds, each checked.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/target_lib.sh
. "$here/../../bench/target_lib.sh"
log=$(mktemp)
trap 'stop_pid "${TARGET_PID:-}"; rm -f "$log"' EXIT
for round in $(seq 20); do
  echo "ferry-bench target ready: segment 127.0.0.1:1 buffer 0x0 size 0" >"$log" # the earlier target's
  target_launch "$log" sleep 30
  if [ -s "$log" ]; then
    echo "FAIL: round $round: the log still held the earlier target's line after target_launch:" >&2
    cat "$log" >&2
    exit 1
  fi
  seg=$(target_segment "$TARGET_PID" "$log" 1)
  if [ -n "$seg" ]; then
    echo "FAIL: round $round: target_segment read the earlier target's segment $seg" >&2
    exit 1
  fi
  stop_pid "$TARGET_PID"
done
echo "ok: 20 launches over a stale log, none read it"
