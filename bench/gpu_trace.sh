#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_trace.sh — where one batch's time goes on a GPU host: ferry-bench pairs
# (one thread, batch 128) with FERRY_TRACE on both sides, each summarised by
# bench/trace_batches.py (the typical batch's timeline), plus GB/s.
#
#   BUILD=build-gpu [SECS=2] [THREADS=1] [BATCH=128] [LOGS=1] bench/gpu_trace.sh [CASE...]
# A case is "label proto target_loc initiator_loc op block [VAR=value...]",
# locations cpu or cuda:N; without cases it runs the default set below.
# A VAR=value of FB_ARGS="--rotate ..." is more ferry-bench flags for both
# processes of that case (quoted: FB_ARGS=--pinned=alloc).
# LOGS=1 runs both sides at FERRY_LOG_LEVEL=3 and prints what the device
# layer said about its copies (kernel or copy engine, and why).
set -uo pipefail
B=${BUILD:-build-gpu}
SECS=${SECS:-2}
THREADS=${THREADS:-1}
BATCH=${BATCH:-128}
LOGS=${LOGS:-0}
lvl=1; [ "$LOGS" = 1 ] && lvl=3
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
fb="$B/ferry-bench"
. "$here/target_lib.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
loc_args() { case $1 in cpu) echo "--use_vram=false" ;; cuda:*) echo "--use_vram=true --gpu_id=${1#cuda:}" ;; esac; }
run_case() {
  local label=$1 proto=$2 tloc=$3 iloc=$4 op=$5 bs=$6 line fbargs=
  shift 6
  local vars=()
  for v in "$@"; do
    case $v in FB_ARGS=*) fbargs="$fbargs ${v#FB_ARGS=}" ;; *) vars+=("$v") ;; esac
  done
  set -- "${vars[@]}"
  rm -f "$work"/t.*
  target_start "$work/target.log" env FERRY_LOG_LEVEL=$lvl "$@" FERRY_TRACE="$work/t.%d" "$fb" $fbargs --mode=target \
      --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE --protocol="$proto" $(loc_args "$tloc") \
      --buffer_size=512M
  line=$(env FERRY_LOG_LEVEL=$lvl "$@" FERRY_TRACE="$work/t.%d" "$fb" $fbargs --mode=initiator --local_server_name=127.0.0.1 \
      --metadata_server=P2PHANDSHAKE --protocol="$proto" $(loc_args "$iloc") --segment_id="$TARGET_SEG" \
      --operation="$op" --block_size="$bs" --batch_size="$BATCH" --threads="$THREADS" --duration="$SECS" \
      --buffer_size=512M --json 2>"$work/init.log" | tail -1)
  target_stop
  echo
  echo "== $label: $proto $iloc -> $tloc $op $bs x $BATCH, $THREADS thread(s) $*$fbargs: $(echo "$line" | sed -n 's/.*"gb_per_s":\([0-9.]*\).*/\1/p') GB/s"
  [ -n "$line" ] || { echo "failed:"; grep -v ': [0-9]* copies' "$work/init.log" | tail -4; tail -4 "$work/target.log"; }
  [ "$LOGS" = 1 ] && grep -h 'cuda:[0-9]*: [0-9]* copies' "$work/init.log" "$work/target.log" | sed 's/^ferry\[[0-9]*\] [a-z]*: //' | sort | uniq -c | head -12
  python3 "$here/trace_batches.py" "$work"/t.* 2>&1 | head -60
}
if [ $# -gt 0 ]; then
  for c in "$@"; do run_case $c; done
  exit 0
fi
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
g1=cuda:0; [ "$ngpu" -ge 2 ] && g1=cuda:1
run_case host-ref tcp cpu cpu write 16384
run_case staged tcp cuda:0 cuda:0 write 16384
run_case host-ref tcp cpu cpu read 16384
run_case staged tcp cuda:0 cuda:0 read 16384
run_case shm tcp,shm $g1 cuda:0 write 65536
run_case shm-slice16M tcp,shm $g1 cuda:0 write 65536 FERRY_SLICE_SIZE=16777216 FERRY_STAGING_CHUNK_SIZE=16777216 FERRY_STAGING_CHUNKS=4
run_case shm-slice16M-copyengine tcp,shm $g1 cuda:0 write 65536 FERRY_SLICE_SIZE=16777216 FERRY_STAGING_CHUNK_SIZE=16777216 FERRY_STAGING_CHUNKS=4 FERRY_CUDA_GATHER_D2D=0
run_case shm tcp,shm $g1 cuda:0 write 1048576
run_case shm-slice16M tcp,shm $g1 cuda:0 write 1048576 FERRY_SLICE_SIZE=16777216 FERRY_STAGING_CHUNK_SIZE=16777216 FERRY_STAGING_CHUNKS=4
run_case shm-slice16M tcp,shm $g1 cuda:0 read 65536 FERRY_SLICE_SIZE=16777216 FERRY_STAGING_CHUNK_SIZE=16777216 FERRY_STAGING_CHUNKS=4
