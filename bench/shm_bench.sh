#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The shm transport end to end (ferry-bench target + initiator on this host),
# WRITE and READ at 64 KiB and 1 MiB x batch 128, printed next to its
# physical references from d2d_ref measured in the same run, then the
# target's per-transport stats (which path served the bytes).
#   BUILD=build MEM="--use_vram=true --gpu_id=0" REF=cuda:0 bench/shm_bench.sh
#   BUILD=build MEM="--location=cpu" REF=sim:0 bench/shm_bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
B=${BUILD:-build}
MEM=${MEM:---location=cpu}
REF=${REF:-cuda:0}
PROTO=${PROTO:-tcp,shm}
DUR=${DUR:-3}
"$B/d2d_ref" "$REF" 1 256
log=$(mktemp)
# shellcheck disable=SC2086
"$B/ferry-bench" --mode=target --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
    --protocol="$PROTO" $MEM --buffer_size=1G >"$log" 2>&1 &
tpid=$!
for _ in $(seq 300); do grep -q ready "$log" && break; sleep 0.1; done
seg=$(sed -n 's/.*segment \([^ ]*\).*/\1/p' "$log")
[ -n "$seg" ] || { cat "$log"; exit 1; }
for op in write read; do
  for bs in 65536 1048576; do
    # shellcheck disable=SC2086
    "$B/ferry-bench" --mode=initiator --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
        --operation=$op --protocol="$PROTO" $MEM --segment_id="$seg" \
        --block_size=$bs --batch_size=128 --duration="$DUR" --json 2>&1 | tail -1
  done
done
kill -INT $tpid
wait $tpid 2>/dev/null
grep stats "$log"
rm -f "$log"
