#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# ferry-bench npu:0 -> tcp -> cpu on the fake ACL runtime, WRITE then READ,
# with its own data check: the bench fills and checks device memory through
# malloc'd buffers and ferry_mem_copy, which old CANN silently corrupts
# unless the backend bounces them (B1).  Needs FERRY_BENCH and the fake's
# FERRY_ASCEND_LIBRARY / FAKEACL_* in the environment (ctest sets them).
set -uo pipefail
log=$(mktemp)
trap 'kill $tpid 2>/dev/null; rm -f "$log"' EXIT
"$FERRY_BENCH" --mode=target --local_server_name=127.0.0.1 --location=cpu --buffer_size=8M >"$log" 2>&1 &
tpid=$!
for _ in $(seq 300); do grep -q ready "$log" && break; sleep 0.1; done
seg=$(sed -n 's/.*segment \([^ ]*\).*/\1/p' "$log")
[ -n "$seg" ] || { cat "$log"; exit 1; }
for op in write read; do
  "$FERRY_BENCH" --mode=initiator --local_server_name=127.0.0.1 --operation=$op --location=npu:0 \
      --segment_id="$seg" --buffer_size=4M --block_size=65536 --batch_size=64 --iterations=5 ||
    { echo "ferry-bench $op npu:0 -> cpu failed (exit $?)"; exit 1; }
done
echo "ferry-bench npu:0 -> tcp -> cpu: WRITE and READ verified"
