#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# ferry-bench cpu -> tcp -> cpu, WRITE then READ, every request of a batch on
# the same block (--same_block, the access pattern of fi_rma_bw and
# ucx_perftest that bench/peers.sh compares with): the run verifies that
# block and says so in its JSON.  Needs FERRY_BENCH (ctest sets it).
set -uo pipefail
log=$(mktemp)
trap 'kill $tpid 2>/dev/null; rm -f "$log"' EXIT
"$FERRY_BENCH" --mode=target --local_server_name=127.0.0.1 --location=cpu --buffer_size=8M >"$log" 2>&1 &
tpid=$!
for _ in $(seq 300); do grep -q ready "$log" && break; sleep 0.1; done
seg=$(sed -n 's/.*segment \([^ ]*\).*/\1/p' "$log")
[ -n "$seg" ] || { cat "$log"; exit 1; }
for op in write read; do
  out=$("$FERRY_BENCH" --mode=initiator --local_server_name=127.0.0.1 --operation=$op --segment_id="$seg" \
      --buffer_size=4M --block_size=65536 --batch_size=32 --threads=2 --iterations=5 --same_block --json) ||
    { echo "ferry-bench $op --same_block failed (exit $?): $out"; exit 1; }
  case $out in
    *'"verified":true'*'"same_block":true'*) ;;
    *) echo "ferry-bench $op --same_block: not verified or not marked: $out"; exit 1 ;;
  esac
done
echo "ferry-bench --same_block: WRITE and READ verified"
