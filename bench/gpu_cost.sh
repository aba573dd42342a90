#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_cost.sh — issue 16 items 3-4 in one run on a GPU host: ferry-bench over
# TCP loopback at 16 KiB, host memory (cpu) and staged GPU memory (cuda:0 on
# both sides, two processes), WRITE and READ, batch 128 and 1,024, one and four
# submitting threads.  Each cell gets a fresh target, so the target's CPU per
# request is the cell's own.  One line a cell: GB/s, CPU us per request
# (initiator / target), batch latency p50 / p99 us.  A large pinned D2H of
# the same run (staging_bench's reference) gives the PCIe time of a batch.
#
#   BUILD=build-gpu [SECS=2] [BLOCK=16384] [TGPU=0] [MEMS="cpu cuda0"] [BATCHES="128 1024"]
#   [THREADS="1 4"] [OPS="write read"] [CELL_ENV="FERRY_X=1 ..."] [FB_ARGS="--rotate ..."]
#   [WRAP_I="taskset -c 0-7"] [WRAP_T="taskset -c 8-15"] bench/gpu_cost.sh
# FB_ARGS: more ferry-bench flags for both processes (--pinned=alloc|thp,
# --rotate); WRAP_I / WRAP_T: a command each process runs under (CPU
# placement).
# TGPU=1 puts the target's GPU memory on cuda:1 (two GPUs: each process has
# a GPU of its own, as on two hosts; on one GPU the two processes' copies
# time-slice it).
set -uo pipefail
B=${BUILD:-build-gpu}
SECS=${SECS:-2}
BLOCK=${BLOCK:-16384}
TGPU=${TGPU:-0}
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
fb="$B/ferry-bench"
. "$(dirname "$0")/target_lib.sh"
num() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
cell() {   # cell MEM OP BATCH THREADS [ENV...]
  local mem=$1 op=$2 batch=$3 thr=$4 log line tcost vram=false
  shift 4
  [ "$mem" = cpu ] || vram=true
  log=$(mktemp)
  # shellcheck disable=SC2086  # WRAP_*, FB_ARGS: zero or more words
  target_start "$log" ${WRAP_T:-} env "$@" "$fb" ${FB_ARGS:-} --mode=target --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
      --operation="$op" --protocol=tcp --use_vram=$vram --gpu_id="$TGPU" --buffer_size=256M \
      --block_size="$BLOCK"
  # shellcheck disable=SC2086
  line=$(${WRAP_I:-} env "$@" "$fb" ${FB_ARGS:-} --mode=initiator --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
      --operation="$op" --protocol=tcp --use_vram=$vram --gpu_id=0 --segment_id="$TARGET_SEG" \
      --block_size="$BLOCK" --batch_size="$batch" --threads="$thr" --duration="$SECS" \
      --buffer_size=256M --json 2>/dev/null | tail -1)
  target_stop
  tcost=$(sed -n 's/.*target cost:.* cpu_us_per_request=\([0-9.]*\).*/\1/p' "$log" | tail -1)
  printf '| %s | %s | %s | %s | %s | %s / %s | %s / %s |\n' "$mem" "$op" "$batch" "$thr" \
    "$(echo "$line" | num gb_per_s)" "$(echo "$line" | num cpu_us_per_request)" "${tcost:-?}" \
    "$(echo "$line" | num batch_p50_us)" "$(echo "$line" | num batch_p99_us)"
  [ -n "$line" ] || { echo "cell failed:"; tail -5 "$log"; }
  case $line in *'"verified":false'*) echo "cell NOT VERIFIED: the bytes that arrived are wrong" ;; esac
  rm -f "$log"
}
echo "| memory | op | batch | threads | GB/s | CPU us/req init / target | batch p50 / p99 us |"
echo "|---|---|---|---|---|---|---|"
for mem in ${MEMS:-cpu cuda0}; do
  for op in ${OPS:-write read}; do
    for batch in ${BATCHES:-128 1024}; do
      # shellcheck disable=SC2086  # CELL_ENV: zero or more assignments
      for thr in ${THREADS:-1 4}; do cell $mem $op $batch $thr FERRY_BENCH_CELL=1 ${CELL_ENV:-}; done
    done
  done
done

# the CPU an idle engine burns with staged GPU memory: a 1 s run, then
# IDLE seconds with the peer connected and nothing submitted
IDLE=${IDLE:-10}
if [ "$IDLE" -gt 0 ]; then
  log=$(mktemp)
  target_start "$log" "$fb" --mode=target --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
      --operation=write --protocol=tcp --use_vram=true --gpu_id=0 --buffer_size=256M
  "$fb" --mode=initiator --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
      --operation=write --protocol=tcp --use_vram=true --gpu_id=0 --segment_id="$TARGET_SEG" \
      --block_size="$BLOCK" --duration=1 --idle_seconds="$IDLE" --buffer_size=256M --json 2>/dev/null |
    tail -1 | sed 's/.*\("idle_seconds".*\)}/idle engine, cuda:0 staged, initiator: \1/'
  target_stop
  sed -n 's/.*target cost:.*\(idle_seconds=.*\)/idle engine, cuda:0 staged, target: \1/p' "$log"
  rm -f "$log"
fi
