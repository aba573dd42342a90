#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# ferry-bench cpu -> tcp -> cpu, WRITE then READ, every request of a batch on
# the same block (--same_block, the access pattern of fi_rma_bw and
# ucx_perftest that bench/peers.sh compares with): the run verifies that
# block and says so in its JSON.  Needs FERRY_BENCH (ctest sets it).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/target_lib.sh
. "$here/../../bench/target_lib.sh"
log=$(mktemp)
trap 'target_stop; rm -f "$log"' EXIT
target_start "$log" "$FERRY_BENCH" --mode=target --local_server_name=127.0.0.1 --location=cpu --buffer_size=8M
[ -n "$TARGET_SEG" ] || { cat "$log"; exit 1; }
for op in write read; do
  out=$("$FERRY_BENCH" --mode=initiator --local_server_name=127.0.0.1 --operation=$op --segment_id="$TARGET_SEG" \
      --buffer_size=4M --block_size=65536 --batch_size=32 --threads=2 --iterations=5 --same_block --json) ||
    { echo "ferry-bench $op --same_block failed (exit $?): $out"; exit 1; }
  case $out in
    *'"verified":true'*'"same_block":true'*) ;;
    *) echo "ferry-bench $op --same_block: not verified or not marked: $out"; exit 1 ;;
  esac
done
echo "ferry-bench --same_block: WRITE and READ verified"
