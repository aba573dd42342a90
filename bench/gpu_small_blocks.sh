#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_small_blocks.sh — issue 16's figures in one run on a GPU host: the
# staging pipeline alone (staging_bench) at 4 KiB..1 MiB, batch 128 and
# 1,024, one batch at a time and several in flight, next to one large pinned
# copy; and GPU0 -> GPU1 over the shm transport (CUDA IPC, direct) with
# ferry-bench, next to a peer copy (bench/peer_ref.py).  With BASE set to a
# folder holding an older staging_bench and ferry-bench, it runs those too,
# in the same run, for a before/after.
#
#   BUILD=build-gpu [BASE=dir] [SECS=1] bench/gpu_small_blocks.sh
set -uo pipefail
B=${BUILD:-build-gpu}
BASE=${BASE:-}
SECS=${SECS:-1}
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
step() { echo; echo "== $*"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
date -u

if [ -n "$BASE" ]; then
  step "staging, before (batch 128, one at a time)"
  "$BASE/staging_bench" cuda:0 "$SECS" 4096 16384 65536 1048576
fi
step "staging, after (batch 128, one at a time)"
"$B/staging_bench" cuda:0 "$SECS" 4096 16384 65536 1048576
step "staging, after (batch 1024, one at a time)"
"$B/staging_bench" --batch=1024 cuda:0 "$SECS" 4096 16384 65536
for d in 2 4; do
  step "staging, after (batch 128, $d in flight)"
  "$B/staging_bench" --depth=$d cuda:0 "$SECS" 4096 16384 65536
done

ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
[ "$ngpu" -ge 2 ] || { step "two GPUs: SKIPPED (this host has $ngpu GPU)"; exit 0; }
step "peer copy reference"
python3 "$(dirname "$0")/peer_ref.py" 0 1 256 2 2>&1
# shm_pair BENCH LABEL [ENV...]: target on cuda:1, initiator on cuda:0, WRITE and READ at 64 KiB and 1 MiB x 128
shm_pair() {
  local fb=$1 label=$2 log seg tpid
  shift 2
  log=$(mktemp)
  env "$@" "$fb" --mode=target --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
      --operation=write --protocol=tcp,shm --use_vram=true --gpu_id=1 --buffer_size=1G >"$log" 2>&1 &
  tpid=$!
  for _ in $(seq 200); do grep -q ready "$log" && break; sleep 0.1; done
  seg=$(sed -n 's/.*segment \([^ ]*\).*/\1/p' "$log")
  for op in write read; do
    for bs in 65536 1048576; do
      line=$(env "$@" "$fb" --mode=initiator --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
          --operation=$op --protocol=tcp,shm --use_vram=true --gpu_id=0 --segment_id="$seg" \
          --block_size=$bs --batch_size=128 --duration=2 --json 2>/dev/null | tail -1)
      echo "$label gpu0->gpu1 shm $line"
    done
  done
  kill $tpid; wait $tpid 2>/dev/null
  rm -f "$log"
}
step "GPU0 -> GPU1 over shm (CUDA IPC, direct)"
[ -n "$BASE" ] && shm_pair "$BASE/ferry-bench" before
shm_pair "$B/ferry-bench" after
shm_pair "$B/ferry-bench" after-copy-engine FERRY_CUDA_GATHER_D2D=0
