#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_shm_pairs.sh — GPU to GPU on one host over shm (CUDA IPC, issue 16
# item 2), before and after in one run: the peer copy reference
# (bench/peer_ref.py), then ferry-bench with the initiator on cuda:0 and the
# target on cuda:1, 128 blocks a batch, data verified, for each build and
# variant given, WRITE and READ at 64 KiB and 1 MiB with 1 and 4 submitting
# threads.  One target per build; variants set variables on the initiator
# (the side that does every copy).
#
#   SECS=1 [THREADS="1 4"] [PEER=GB/s] [BLOCKS="65536 1048576"] bench/gpu_shm_pairs.sh \
#       LABEL=DIR[:VAR=value,VAR=value] ...
# DIR holds ferry-bench (and lib/ for LD_LIBRARY_PATH).  Prints one line per
# cell: label, threads, op, block, GB/s, ratio to the peer copy, the JSON.
set -uo pipefail
SECS=${SECS:-1}
THREADS=${THREADS:-1 4}
BLOCKS=${BLOCKS:-65536 1048576}
VRAM=${VRAM:-true}   # false: host memory (to try the script without GPUs)
here=$(cd "$(dirname "$0")" && pwd)
. "$here/target_lib.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# PEER=GB/s: the reference of an earlier call of the same run (skips peer_ref.py)
peer=${PEER:-}
if [ -z "$peer" ]; then
  ref=$(timeout 60 python3 "$here/peer_ref.py" 0 1 256 2 2>&1)
  echo "$ref"
  peer=$(echo "$ref" | sed -n '1s/.*: \([0-9.]*\) GB\/s/\1/p')
  [ -n "$peer" ] || peer=383
fi
for spec in "$@"; do
  label=${spec%%=*}
  rest=${spec#*=}
  dir=${rest%%:*}
  vars=""
  [ "$rest" != "$dir" ] && vars=$(echo "${rest#*:}" | tr ',' ' ')
  fb="$dir/ferry-bench"
  export LD_LIBRARY_PATH="$dir/lib:${LD_LIBRARY_PATH:-}"
  target_start "$work/target.log" timeout 300 "$fb" --mode=target --local_server_name=127.0.0.1 \
      --metadata_server=P2PHANDSHAKE --protocol=tcp,shm --use_vram=$VRAM --gpu_id=1 --buffer_size=1G
  [ -n "$TARGET_SEG" ] || { echo "$label: target did not start"; tail -5 "$work/target.log"; continue; }
  for th in $THREADS; do
    for op in write read; do
      for bs in $BLOCKS; do
        line=$(env $vars timeout 60 "$fb" --mode=initiator --local_server_name=127.0.0.1 \
            --metadata_server=P2PHANDSHAKE --protocol=tcp,shm --use_vram=$VRAM --gpu_id=0 \
            --segment_id="$TARGET_SEG" --operation=$op --block_size=$bs --batch_size=128 --threads=$th \
            --duration="$SECS" --buffer_size=1G --json 2>"$work/init.log" | tail -1)
        gbs=$(echo "$line" | sed -n 's/.*"gb_per_s":\([0-9.]*\).*/\1/p')
        ratio=$(awk -v a="${gbs:-0}" -v b="$peer" 'BEGIN{printf "%.2f", a / b}')
        echo "$label th=$th $op $bs ${gbs:-FAILED} GB/s ratio $ratio $vars $line"
        [ -n "$gbs" ] || tail -3 "$work/init.log"
      done
    done
  done
  target_stop
done
