#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# ferry-bench's --rotate (each batch the next region of the buffers: cold
# data) moves and verifies WRITE and READ cpu -> tcp -> cpu, and says so in
# its JSON; --pinned and --rotate refuse what they cannot do with a usage
# error naming the flag (exit 2), and --pinned without libcuda.so.1 says so
# (exit 1).  Needs FERRY_BENCH (ctest sets it).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/target_lib.sh
. "$here/../../bench/target_lib.sh"
log=$(mktemp)
trap 'target_stop; rm -f "$log"' EXIT
refuse() {  # CODE TEXT FLAGS...: ferry-bench must exit CODE saying TEXT
  local code=$1 text=$2 out rc
  shift 2
  out=$("$FERRY_BENCH" --mode=initiator --segment_id=127.0.0.1:1 "$@" 2>&1)
  rc=$?
  [ "$rc" = "$code" ] || { echo "ferry-bench $*: exit $rc, not $code: $out"; exit 1; }
  case $out in *"$text"*) ;; *) echo "ferry-bench $*: says '$out', not '$text'"; exit 1 ;; esac
}
refuse 2 "--pinned must be alloc or thp, not 'bogus'" --pinned=bogus
refuse 2 "--pinned is for cpu buffers, not --location=sim:0" --pinned=alloc --location=sim:0
refuse 2 "--rotate and --same_block contradict each other" --rotate --same_block
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  target_start "$log" "$FERRY_BENCH" --mode=target --local_server_name=127.0.0.1 --location=cpu --buffer_size=8M
  [ -n "$TARGET_SEG" ] || { cat "$log"; exit 1; }
  out=$("$FERRY_BENCH" --mode=initiator --local_server_name=127.0.0.1 --segment_id="$TARGET_SEG" \
      --buffer_size=4M --block_size=65536 --batch_size=8 --iterations=1 --pinned=thp 2>&1)
  rc=$?
  [ "$rc" = 1 ] && case $out in *"--pinned needs libcuda.so.1"*) true ;; *) false ;; esac ||
    { echo "--pinned without libcuda.so.1: exit $rc: $out"; exit 1; }
  target_stop
fi
target_start "$log" "$FERRY_BENCH" --mode=target --local_server_name=127.0.0.1 --location=cpu --buffer_size=8M
[ -n "$TARGET_SEG" ] || { cat "$log"; exit 1; }
for op in write read; do
  # 4 MiB of local buffer, 8 MiB remote: two slots of 2 threads x 16 x 64 KiB, each used twice
  out=$("$FERRY_BENCH" --mode=initiator --local_server_name=127.0.0.1 --operation=$op --segment_id="$TARGET_SEG" \
      --buffer_size=4M --block_size=65536 --batch_size=16 --threads=2 --iterations=4 --rotate --json) ||
    { echo "ferry-bench $op --rotate failed (exit $?): $out"; exit 1; }
  case $out in
    *'"verified":true'*'"rotate":true'*) ;;
    *) echo "ferry-bench $op --rotate: not verified or not marked: $out"; exit 1 ;;
  esac
done
echo "ferry-bench --rotate: WRITE and READ verified; --pinned / --rotate refusals named"
